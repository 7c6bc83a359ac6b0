"""The relay contract over HTTP: ``create_app`` on an in-memory event log.

One test per row of the contract's endpoint table and per kind of bad input. Every refusal is
checked for its status, for the envelope naming the field at fault, for the server staying
healthy afterwards and for the events recorded earlier being untouched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Litestar
from litestar.testing import AsyncTestClient
from structlog.testing import capture_logs

from eventstore.errors import EventLogUnavailable, WrongExpectedVersion
from eventstore.log import (
    AppendResult,
    EventLog,
    RecordedEvent,
    Subject,
)
from eventstore.memory import InMemoryEventLog
from relaypush.auth.client_jwt import make_client_jwt
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.domain.events import (
    AnyEvent,
    ClientRegistered,
    ClientUnregistered,
    NotificationAccepted,
    NotificationDropped,
    NotificationDuplicate,
    NotifyMessage,
    ProviderType,
    RawMessage,
    TenantCreated,
    TenantSuspended,
    TenantUnsuspended,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import tenant_subject
from relaypush.http import create_app
from relaypush.http.ratelimit import RateLimited, RateLimiter
from relaypush.metrics import Registry
from relaypush.service import RelayService
from tests.eventlogs import WrappedLog

ALL_PROVIDERS: frozenset[ProviderType] = frozenset({"apns", "apns-sandbox", "fcm", "noop"})
LEGACY = "z6MkLegacyClient"
RAW = "z6MkRawClient"
ENCRYPTED_BLOB = base64.b64encode(b"\x01opaque-envelope\xff").decode()
MIB = 1024 * 1024

Snapshot = list[tuple[int, Subject, bytes]]


class FlakyLog(WrappedLog):
    """An in-memory log whose appends (or reads) fail while a switch is on."""

    def __init__(self) -> None:
        self.memory = InMemoryEventLog()
        super().__init__(self.memory)
        self.appends_fail = False
        self.reads_crash = False

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        if self.appends_fail:
            raise EventLogUnavailable("no responders")
        return await super().append(
            subject,
            data,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
            headers=headers,
        )

    async def last(self, subject: Subject) -> RecordedEvent | None:
        if self.reads_crash:
            raise RuntimeError("secret internal detail")
        return await super().last(subject)

    async def close(self) -> None:
        await self.memory.close()


class Monotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ContendedLog(InMemoryEventLog):
    """Every append that names an expected version finds the subject moved on."""

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        if expected_version is not None:
            raise WrongExpectedVersion(subject, expected_version, expected_version + 1)
        return await super().append(subject, data, idempotency_key=idempotency_key)


@dataclass
class Env:
    client: AsyncTestClient[Litestar]
    log: InMemoryEventLog
    registry: Registry
    monotonic: Monotonic


@asynccontextmanager
async def running(
    settings: Settings | None = None,
    *,
    log: EventLog | None = None,
    inner: InMemoryEventLog | None = None,
    enabled: frozenset[ProviderType] = ALL_PROVIDERS,
) -> AsyncIterator[Env]:
    """The app on a fresh in-memory log (or on ``log``, whose events live in ``inner``)."""
    memory = inner or InMemoryEventLog()
    registry = Registry()
    monotonic = Monotonic()
    service = RelayService(
        log or memory, enabled_providers=lambda _: enabled, monotonic=monotonic, metrics=registry
    )
    app = create_app(settings=settings or Settings(), service=service, metrics=registry)
    async with AsyncTestClient(app=app) as client:
        yield Env(client=client, log=memory, registry=registry, monotonic=monotonic)


async def snapshot(log: InMemoryEventLog) -> Snapshot:
    return [(e.position, e.subject, e.data) async for e in log.read()]


async def events(log: InMemoryEventLog) -> list[AnyEvent]:
    return [decode_event(e.data) async for e in log.read()]


def legacy_body(
    message_id: str = "msg-1", *, flags: int = 1, blob: str = ENCRYPTED_BLOB, topic: str = "ab12"
) -> dict[str, Any]:
    return {"id": message_id, "payload": {"topic": topic, "flags": flags, "blob": blob}}


def register_body(client_id: str = LEGACY, **extra: Any) -> dict[str, Any]:
    return {"client_id": client_id, "type": "noop", "token": "device-token", **extra}


async def assert_healthy(env: Env) -> None:
    response = await env.client.get("/health")
    assert response.status_code == 200
    assert response.text.startswith("OK, relaypush v")


def fields_of(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    assert body["status"] == "FAILED"
    return [(f["field"], f["location"]) for f in body["fields"]]


def error_names(body: Mapping[str, Any]) -> list[str]:
    return [e["name"] for e in body["errors"]]


@pytest_asyncio.fixture(name="env")
async def fx_env() -> AsyncIterator[Env]:
    """The app with a legacy client, a raw client and one accepted push already recorded."""
    async with running() as env:
        for body in (register_body(LEGACY), register_body(RAW, always_raw=True)):
            assert (await env.client.post("/clients", json=body)).status_code == 200
        seeded = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("seed-1"))
        assert seeded.status_code == 202
        yield env


async def refused(
    env: Env,
    method: str,
    path: str,
    expected_status: int,
    *,
    json_body: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Send a request that must be refused: nothing is recorded, the server stays healthy."""
    before = await snapshot(env.log)
    response = await env.client.request(
        method, path, json=json_body, content=content, headers=dict(headers or {})
    )
    assert response.status_code == expected_status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["status"] == "FAILED"
    assert "Traceback" not in response.text
    assert await snapshot(env.log) == before
    await assert_healthy(env)
    return body


# GET /health


async def test_health_names_the_server_and_its_version(env: Env) -> None:
    response = await env.client.get("/health")
    assert response.status_code == 200
    assert response.text == f"OK, relaypush v{version('relaypush')}"


async def test_health_is_503_in_the_envelope_while_not_ready() -> None:
    answer = False

    async def ready() -> bool:
        return answer

    settings = Settings()
    service = RelayService(InMemoryEventLog(), enabled_providers=lambda _: ALL_PROVIDERS)
    app = create_app(settings=settings, service=service, metrics=Registry(), ready=ready)
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/health")
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert error_names(response.json()) == ["not_ready"]
        answer = True
        assert (await client.get("/health")).status_code == 200


# POST /clients


async def test_register_records_the_client(env: Env) -> None:
    response = await env.client.post("/clients", json=register_body("z6MkNew", type="FCM"))
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}
    last = (await events(env.log))[-1]
    assert isinstance(last, ClientRegistered)
    assert (last.tenant_id, last.client_id, last.provider, last.token, last.always_raw) == (
        DEFAULT_TENANT,
        "z6MkNew",
        "fcm",
        "device-token",
        False,
    )


async def test_reregister_is_an_upsert_never_409(env: Env) -> None:
    body = register_body(LEGACY, token="new-token")
    response = await env.client.post("/clients", json=body)
    assert response.status_code == 200
    last = (await events(env.log))[-1]
    assert isinstance(last, ClientRegistered)
    assert last.token == "new-token"


async def test_did_key_prefix_is_stripped(env: Env) -> None:
    response = await env.client.post("/clients", json=register_body("did:key:z6MkPrefixed"))
    assert response.status_code == 200
    last = (await events(env.log))[-1]
    assert isinstance(last, ClientRegistered)
    assert last.client_id == "z6MkPrefixed"
    pushed = await env.client.post("/clients/z6MkPrefixed", json=legacy_body())
    assert pushed.status_code == 202
    assert isinstance((await events(env.log))[-1], NotificationAccepted)


async def test_unknown_type_names_type(env: Env) -> None:
    body = await refused(env, "POST", "/clients", 400, json_body=register_body(type="hms"))
    assert fields_of(body) == [("type", "body")]


@pytest.mark.parametrize(
    ("body", "bad_fields"),
    [
        ({"type": "noop", "token": "t"}, {"client_id"}),
        ({"client_id": LEGACY, "type": "noop"}, {"token"}),
        ({"client_id": "", "type": "noop", "token": ""}, {"client_id", "token"}),
        ({"client_id": 5, "type": "noop", "token": ["t"]}, {"client_id", "token"}),
        ({"client_id": LEGACY, "type": 7, "token": "t"}, {"type"}),
        ({"client_id": LEGACY, "type": "", "token": "t"}, {"type"}),
        (register_body(always_raw="yes"), {"always_raw"}),
        ({}, {"client_id", "type", "token"}),
    ],
    ids=[
        "missing-client_id",
        "missing-token",
        "empty-strings",
        "wrong-types",
        "type-not-string",
        "empty-type",
        "always_raw-not-bool",
        "empty-object",
    ],
)
async def test_register_names_each_bad_field(
    env: Env, body: dict[str, Any], bad_fields: set[str]
) -> None:
    answer = await refused(env, "POST", "/clients", 400, json_body=body)
    named = fields_of(answer)
    assert {field for field, _ in named} == bad_fields
    assert len(named) == len(bad_fields)
    assert {location for _, location in named} == {"body"}


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"], ids=str)
async def test_register_body_that_is_not_a_json_object_names_body(env: Env, content: bytes) -> None:
    answer = await refused(env, "POST", "/clients", 400, content=content)
    assert fields_of(answer) == [("body", "body")]


async def test_provider_not_configured_for_the_tenant() -> None:
    async with running(enabled=frozenset({"noop"})) as env:
        body = await refused(env, "POST", "/clients", 400, json_body=register_body(type="apns"))
        assert error_names(body) == ["provider_not_available"]
        assert fields_of(body) == [("type", "body")]


@pytest.mark.parametrize("path", ["/clients", f"/clients/{LEGACY}"])
async def test_body_over_one_mib_is_413(env: Env, path: str) -> None:
    body = await refused(env, "POST", path, 413, content=b"x" * (MIB + 1))
    assert error_names(body) == ["request_too_large"]
    assert fields_of(body) == [("body", "body")]


async def test_body_of_exactly_one_mib_is_read(env: Env) -> None:
    padding = " " * (MIB - len(json.dumps(register_body())))
    content = (json.dumps(register_body()) + padding).encode()
    assert len(content) == MIB
    assert (await env.client.post("/clients", content=content)).status_code == 200


# DELETE /clients/{id}


async def test_unregister_records_the_removal(env: Env) -> None:
    response = await env.client.delete(f"/clients/{LEGACY}")
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}
    last = (await events(env.log))[-1]
    assert isinstance(last, ClientUnregistered)
    assert (last.client_id, last.reason) == (LEGACY, "requested")
    pushed = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("after"))
    assert pushed.status_code == 202
    dropped = (await events(env.log))[-1]
    assert isinstance(dropped, NotificationDropped)


async def test_unregister_is_idempotent(env: Env) -> None:
    for _ in range(2):
        assert (await env.client.delete("/clients/z6MkNeverSeen")).status_code == 200
    tail = (await events(env.log))[-2:]
    assert [type(e) for e in tail] == [ClientUnregistered, ClientUnregistered]


# POST /clients/{id}


async def test_push_is_accepted_with_its_payload_byte_for_byte(env: Env) -> None:
    blob = ENCRYPTED_BLOB
    response = await env.client.post(
        f"/clients/{LEGACY}", json=legacy_body("msg-42", flags=1 | 4 | 16 | 64, blob=blob)
    )
    assert response.status_code == 202
    assert response.json() == {"status": "OK"}
    accepted = (await events(env.log))[-1]
    assert isinstance(accepted, NotificationAccepted)
    assert accepted.message_id == "msg-42"
    assert accepted.topic == "ab12"
    assert accepted.flags == 85
    assert accepted.flag_names == ("encrypted", "auth", "notify")
    assert accepted.encrypted
    assert accepted.blob == blob


async def test_string_payload_means_the_same(env: Env) -> None:
    response = await env.client.post(
        f"/clients/{LEGACY}", json={"id": "msg-s", "payload": f"ab12:1:{ENCRYPTED_BLOB}"}
    )
    assert response.status_code == 202
    accepted = (await events(env.log))[-1]
    assert isinstance(accepted, NotificationAccepted)
    assert (accepted.topic, accepted.flags, accepted.blob) == ("ab12", 1, ENCRYPTED_BLOB)


async def test_cleartext_notify_blob_is_decoded(env: Env) -> None:
    notify = {"title": "Hello", "body": "World", "url": "https://example.com"}
    blob = base64.b64encode(json.dumps(notify).encode()).decode()
    response = await env.client.post(f"/clients/{LEGACY}", json=legacy_body(flags=16, blob=blob))
    assert response.status_code == 202
    accepted = (await events(env.log))[-1]
    assert isinstance(accepted, NotificationAccepted)
    assert accepted.notify == NotifyMessage(title="Hello", body="World", url="https://example.com")
    assert accepted.blob == blob


async def test_duplicate_is_200_and_nothing_is_accepted_again(env: Env) -> None:
    response = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("seed-1"))
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}
    recorded = await events(env.log)
    assert isinstance(recorded[-1], NotificationDuplicate)
    accepted = [e for e in recorded if isinstance(e, NotificationAccepted)]
    assert [e.message_id for e in accepted] == ["seed-1"]


async def test_same_message_id_for_two_clients_is_two_notifications(env: Env) -> None:
    await env.client.post("/clients", json=register_body("z6MkOther"))
    response = await env.client.post("/clients/z6MkOther", json=legacy_body("seed-1"))
    assert response.status_code == 202


async def test_push_to_unknown_client_is_202_and_recorded_as_dropped(env: Env) -> None:
    response = await env.client.post("/clients/z6MkNobody", json=legacy_body("m-x"))
    assert response.status_code == 202
    assert response.json() == {"status": "OK"}
    last = (await events(env.log))[-1]
    assert isinstance(last, NotificationDropped)
    assert (last.client_id, last.message_id, last.reason) == (
        "z6MkNobody",
        "m-x",
        "client_not_registered",
    )


async def test_push_to_suspended_tenant_is_202_with_tenant_suspended_and_held(env: Env) -> None:
    suspended = TenantSuspended(
        event_id="s1",
        occurred_at=datetime.now(UTC),
        tenant_id=DEFAULT_TENANT,
        reason="InvalidProviderToken",
    )
    await env.log.append(tenant_subject(DEFAULT_TENANT), encode_event(suspended))
    # what the service knew of the tenant is trusted for at most a second
    env.monotonic.now += 1.0
    response = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("m-s"))
    assert response.status_code == 202
    assert error_names(response.json()) == ["tenant_suspended"]
    assert fields_of(response.json()) == []
    last = (await events(env.log))[-1]
    assert isinstance(last, NotificationAccepted)  # recorded and held, not dropped
    assert last.message_id == "m-s"
    unsuspended = TenantUnsuspended(
        event_id="s2", occurred_at=datetime.now(UTC), tenant_id=DEFAULT_TENANT
    )
    await env.log.append(tenant_subject(DEFAULT_TENANT), encode_event(unsuspended))
    env.monotonic.now += 1.0
    again = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("m-s"))
    assert (again.status_code, again.json()) == (200, {"status": "OK"})  # already held
    other = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("m-t"))
    assert (other.status_code, other.json()) == (202, {"status": "OK"})


async def test_raw_client_is_deduplicated_by_sha256(env: Env) -> None:
    body = {"topic": "ab12", "tag": 4002, "message": "raw-payload"}
    first = await env.client.post(f"/clients/{RAW}", json=body)
    second = await env.client.post(f"/clients/{RAW}", json=body)
    assert (first.status_code, second.status_code) == (202, 200)
    recorded = await events(env.log)
    accepted, duplicate = recorded[-2], recorded[-1]
    assert isinstance(accepted, NotificationAccepted)
    assert isinstance(duplicate, NotificationDuplicate)
    digest = hashlib.sha256(b"raw-payload").hexdigest()
    assert accepted.message_id == duplicate.message_id == digest
    assert accepted.raw == RawMessage(topic="ab12", tag=4002, message="raw-payload")


ID_TOPIC_BLOB = {"id", "payload.topic", "payload.blob"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("body", "bad_fields"),
    [
        ({"payload": {"topic": "ab", "flags": 1, "blob": "x"}}, {"id"}),
        ({"id": "m"}, {"payload"}),
        ({"id": "", "payload": {"topic": "", "flags": 1, "blob": ""}}, ID_TOPIC_BLOB),
        ({"id": 5, "payload": {"topic": 1, "flags": 1, "blob": True}}, ID_TOPIC_BLOB),
        ({"id": "m", "payload": 5}, {"payload"}),
        (legacy_body(flags=-1), {"payload.flags"}),
        (legacy_body(flags=1.5), {"payload.flags"}),  # type: ignore[arg-type]
        (legacy_body(flags="17"), {"payload.flags"}),  # type: ignore[arg-type]
        ({"id": "m", "payload": {"topic": "ab", "blob": "x"}}, {"payload.flags"}),
        ({"id": "m", "payload": "ab:1"}, {"payload"}),
        ({"id": "m", "payload": "ab:1:x:y"}, {"payload"}),
        ({"id": "m", "payload": "ab:-1:eA=="}, {"payload.flags"}),
        ({"id": "m", "payload": "ab:x:eA=="}, {"payload.flags"}),
        (legacy_body(flags=16, blob="not base64!"), {"payload.blob"}),
        (legacy_body(flags=16, blob=b64(b"plain text")), {"payload.blob"}),
        (legacy_body(flags=16, blob=b64(b'{"title": "t"}')), {"payload.blob"}),
        ({"topic": "ab", "tag": 1, "message": "raw body to a legacy client"}, {"message"}),
    ],
    ids=[
        "missing-id",
        "missing-payload",
        "empty-strings",
        "wrong-types",
        "payload-number",
        "negative-flags",
        "fractional-flags",
        "string-flags",
        "missing-flags",
        "too-few-parts",
        "too-many-parts",
        "negative-flags-in-string",
        "non-integer-flags-in-string",
        "blob-not-base64",
        "blob-not-json",
        "blob-not-notify",
        "raw-body-to-legacy-client",
    ],
)  # fmt: skip
async def test_malformed_push_names_the_bad_part(
    env: Env, body: dict[str, Any], bad_fields: set[str]
) -> None:
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 400, json_body=body)
    named = fields_of(answer)
    assert {field for field, _ in named} == bad_fields
    assert {location for _, location in named} == {"body"}


@pytest.mark.parametrize(
    ("body", "bad_fields"),
    [
        (legacy_body(), {"payload"}),
        ({"topic": "ab", "tag": -1, "message": "m"}, {"tag"}),
        ({"topic": "ab", "tag": "1", "message": "m"}, {"tag"}),
        ({"topic": "", "tag": 1, "message": ""}, {"topic", "message"}),
    ],
    ids=["legacy-body-to-raw-client", "negative-tag", "string-tag", "empty-strings"],
)
async def test_malformed_raw_push_names_the_bad_part(
    env: Env, body: dict[str, Any], bad_fields: set[str]
) -> None:
    answer = await refused(env, "POST", f"/clients/{RAW}", 400, json_body=body)
    assert {field for field, _ in fields_of(answer)} == bad_fields


@pytest.mark.parametrize("content", [b"{not json", b"[]", b"null"], ids=str)
async def test_push_body_that_is_not_a_json_object_names_body(env: Env, content: bytes) -> None:
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 400, content=content)
    assert fields_of(answer) == [("body", "body")]


async def test_malformed_push_to_unknown_client_is_400_not_202(env: Env) -> None:
    answer = await refused(env, "POST", "/clients/z6MkNobody", 400, json_body={"id": "m"})
    assert fields_of(answer) == [("payload", "body")]


@pytest.mark.parametrize("path", [f"/clients/{LEGACY}", f"/clients/{RAW}"])
async def test_payload_over_the_provider_limit(env: Env, path: str) -> None:
    body = (
        legacy_body(blob="A" * 5000)
        if path.endswith(LEGACY)
        else {"topic": "ab", "tag": 1, "message": "m" * 5000}
    )
    answer = await refused(env, "POST", path, 400, json_body=body)
    assert error_names(answer) == ["payload_too_large"]
    assert len(fields_of(answer)) == 1


# ids


BAD_CLIENT_IDS = ["a\nb", "a\x00b", "a\x7fb", "\u00e9" * 128, "x" * 256, "x" * 1000]
BAD_CLIENT_ID_NAMES = ["newline", "nul", "del", "256-bytes-of-unicode", "256-chars", "1000-chars"]
BAD_TENANT_IDS = ["a.b", "a*", "a>b", "a b", "clïent", "x" * 1000]
BAD_TENANT_ID_NAMES = ["dot", "star", "gt", "space", "unicode", "1000-chars"]


def in_path(segment: str) -> str:
    return quote(segment, safe="")


@pytest.mark.parametrize("bad", BAD_CLIENT_IDS, ids=BAD_CLIENT_ID_NAMES)
async def test_bad_client_id_in_a_push_path(env: Env, bad: str) -> None:
    answer = await refused(env, "POST", f"/clients/{in_path(bad)}", 400, json_body=legacy_body())
    assert fields_of(answer) == [("id", "path")]


@pytest.mark.parametrize("bad", BAD_CLIENT_IDS, ids=BAD_CLIENT_ID_NAMES)
async def test_bad_client_id_in_a_delete_path(env: Env, bad: str) -> None:
    answer = await refused(env, "DELETE", f"/clients/{in_path(bad)}", 400)
    assert fields_of(answer) == [("id", "path")]


@pytest.mark.parametrize("bad", [*BAD_CLIENT_IDS, "a/b"], ids=[*BAD_CLIENT_ID_NAMES, "slash"])
async def test_bad_client_id_in_a_register_body(env: Env, bad: str) -> None:
    answer = await refused(env, "POST", "/clients", 400, json_body=register_body(bad))
    assert fields_of(answer) == [("client_id", "body")]


@pytest.mark.parametrize("bad", BAD_TENANT_IDS, ids=BAD_TENANT_ID_NAMES)
async def test_bad_tenant_id_in_a_path(env: Env, bad: str) -> None:
    answer = await refused(env, "POST", f"/{in_path(bad)}/clients", 400, json_body=register_body())
    assert fields_of(answer) == [("tenant_id", "path")]


@pytest.mark.parametrize("bad", ["a\nb", "\x00", "\u2603" * 86, "1" * 256])
async def test_bad_message_id_names_id(env: Env, bad: str) -> None:
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 400, json_body=legacy_body(bad))
    assert fields_of(answer) == [("id", "body")]


@pytest.mark.parametrize("client_id", ["wallet.1", "a.*", "a.>", "msg-\u00fc-\U0001f514", " x "])
async def test_ids_with_dots_wildcards_and_unicode_are_ordinary(env: Env, client_id: str) -> None:
    registered = await env.client.post("/clients", json=register_body(client_id))
    assert registered.status_code == 200, registered.text
    pushed = await env.client.post(f"/clients/{in_path(client_id)}", json=legacy_body("a.>"))
    assert pushed.status_code == 202, pushed.text
    accepted = (await events(env.log))[-1]
    assert isinstance(accepted, NotificationAccepted)
    assert (accepted.client_id, accepted.message_id) == (client_id, "a.>")
    assert (await env.client.delete(f"/clients/{in_path(client_id)}")).status_code == 200


# multi-tenant


async def test_tenant_routes_keep_tenants_apart(env: Env) -> None:
    created = TenantCreated(event_id="c1", occurred_at=datetime.now(UTC), tenant_id="acme")
    await env.log.append(tenant_subject("acme"), encode_event(created))
    assert (await env.client.post("/acme/clients", json=register_body("z6MkT"))).status_code == 200
    assert (await env.client.post("/acme/clients/z6MkT", json=legacy_body())).status_code == 202
    assert (await env.client.post("/clients/z6MkT", json=legacy_body())).status_code == 202
    assert (await env.client.delete("/acme/clients/z6MkT")).status_code == 200
    tail = (await events(env.log))[-4:]
    assert [(type(e).__name__, e.tenant_id) for e in tail] == [
        ("ClientRegistered", "acme"),
        ("NotificationAccepted", "acme"),
        ("NotificationDropped", DEFAULT_TENANT),
        ("ClientUnregistered", "acme"),
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/nobody/clients", register_body("z6MkT")),
        ("DELETE", "/nobody/clients/z6MkT", None),
        ("POST", "/nobody/clients/z6MkT", legacy_body()),
    ],
)
async def test_unknown_tenant_names_tenant_id_in_the_path(
    env: Env, method: str, path: str, body: Any
) -> None:
    answer = await refused(env, method, path, 400, json_body=body)
    assert fields_of(answer) == [("tenant_id", "path")]


# every action appends exactly one event


async def test_every_action_appends_exactly_one_event(env: Env) -> None:
    actions: list[tuple[str, str, Any]] = [
        ("POST", "/clients", register_body("z6MkOne")),
        ("POST", "/clients", register_body("z6MkOne")),
        ("POST", "/clients/z6MkOne", legacy_body("a")),
        ("POST", "/clients/z6MkOne", legacy_body("a")),
        ("POST", "/clients/z6MkNone", legacy_body("a")),
        ("DELETE", "/clients/z6MkOne", None),
        ("DELETE", "/clients/z6MkOne", None),
        ("POST", "/clients/z6MkOne", legacy_body("b")),
    ]
    for method, path, body in actions:
        before = len(await snapshot(env.log))
        response = await env.client.request(method, path, json=body)
        assert response.status_code < 300
        assert len(await snapshot(env.log)) == before + 1, (method, path)


async def test_fifty_identical_pushes_at_once_are_accepted_once(env: Env) -> None:
    body = legacy_body("concurrent")
    responses = await asyncio.gather(
        *(env.client.post(f"/clients/{LEGACY}", json=body) for _ in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 49 + [202]
    mine = [e for e in await events(env.log) if getattr(e, "message_id", None) == "concurrent"]
    assert sum(isinstance(e, NotificationAccepted) for e in mine) == 1
    assert sum(isinstance(e, NotificationDuplicate) for e in mine) == 49
    assert len(mine) == 50


# relay signature


@pytest_asyncio.fixture(name="signed")
async def fx_signed() -> AsyncIterator[tuple[Env, Ed25519PrivateKey]]:
    """The app with a relay key configured, a registered legacy client and one push."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    async with running(Settings(relay_public_key=public)) as env:
        assert (await env.client.post("/clients", json=register_body())).status_code == 200
        content = json.dumps(legacy_body("seed-1")).encode()
        seeded = await env.client.post(
            f"/clients/{LEGACY}", content=content, headers=sign(key, content)
        )
        assert seeded.status_code == 202
        yield env, key


def sign(key: Ed25519PrivateKey, content: bytes, timestamp: int | None = None) -> dict[str, str]:
    signature, ts = make_relay_signature(key, timestamp or int(time.time()), content)
    return {"X-Ed25519-Signature": signature, "X-Ed25519-Timestamp": ts}


async def test_signed_push_is_accepted(signed: tuple[Env, Ed25519PrivateKey]) -> None:
    env, key = signed
    content = json.dumps(legacy_body("signed-2")).encode()
    response = await env.client.post(
        f"/clients/{LEGACY}", content=content, headers=sign(key, content)
    )
    assert response.status_code == 202


async def test_missing_signature_headers_are_named(
    signed: tuple[Env, Ed25519PrivateKey],
) -> None:
    env, _ = signed
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 401, json_body=legacy_body("u"))
    assert fields_of(answer) == [
        ("X-Ed25519-Signature", "header"),
        ("X-Ed25519-Timestamp", "header"),
    ]


async def test_unsigned_push_to_unknown_client_is_401(
    signed: tuple[Env, Ed25519PrivateKey],
) -> None:
    env, _ = signed
    await refused(env, "POST", "/clients/z6MkNobody", 401, json_body=legacy_body("u"))


async def test_unsigned_malformed_push_is_401_before_400(
    signed: tuple[Env, Ed25519PrivateKey],
) -> None:
    env, _ = signed
    await refused(env, "POST", "/clients/a.b", 401, content=b"not json")


async def test_signature_that_is_not_hex_is_401(signed: tuple[Env, Ed25519PrivateKey]) -> None:
    env, _ = signed
    headers = {"X-Ed25519-Signature": "zz" * 64, "X-Ed25519-Timestamp": str(int(time.time()))}
    answer = await refused(
        env, "POST", f"/clients/{LEGACY}", 401, json_body=legacy_body("h"), headers=headers
    )
    assert fields_of(answer) == [("X-Ed25519-Signature", "header")]


async def test_signature_of_another_key_is_401(signed: tuple[Env, Ed25519PrivateKey]) -> None:
    env, _ = signed
    content = json.dumps(legacy_body("k")).encode()
    headers = sign(Ed25519PrivateKey.generate(), content)
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 401, content=content, headers=headers)
    assert fields_of(answer) == [("X-Ed25519-Signature", "header")]


async def test_signature_over_another_body_is_401(signed: tuple[Env, Ed25519PrivateKey]) -> None:
    env, key = signed
    headers = sign(key, json.dumps(legacy_body("one")).encode())
    content = json.dumps(legacy_body("two")).encode()
    await refused(env, "POST", f"/clients/{LEGACY}", 401, content=content, headers=headers)


async def test_stale_timestamp_is_401(signed: tuple[Env, Ed25519PrivateKey]) -> None:
    env, key = signed
    content = json.dumps(legacy_body("old")).encode()
    headers = sign(key, content, timestamp=int(time.time()) - 301 - 60)
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 401, content=content, headers=headers)
    assert fields_of(answer) == [("X-Ed25519-Timestamp", "header")]


async def test_replayed_signature_is_401(signed: tuple[Env, Ed25519PrivateKey]) -> None:
    env, key = signed
    content = json.dumps(legacy_body("replay")).encode()
    headers = sign(key, content)
    first = await env.client.post(f"/clients/{LEGACY}", content=content, headers=headers)
    assert first.status_code == 202
    answer = await refused(env, "POST", f"/clients/{LEGACY}", 401, content=content, headers=headers)
    assert fields_of(answer) == [("X-Ed25519-Signature", "header")]


# client JWT


def jwt_for(key: Ed25519PrivateKey, audience: str = "http://127.0.0.1:8080") -> str:
    return make_client_jwt(key, audience=audience, iat=time.time())


def did_of(key: Ed25519PrivateKey) -> str:
    from relaypush.auth.client_jwt import ed25519_to_did_key

    return ed25519_to_did_key(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


async def test_required_client_auth_names_authorization() -> None:
    async with running(Settings(require_client_auth=True)) as env:
        answer = await refused(env, "POST", "/clients", 401, json_body=register_body())
        assert fields_of(answer) == [("Authorization", "header")]
        answer = await refused(env, "DELETE", f"/clients/{LEGACY}", 401)
        assert fields_of(answer) == [("Authorization", "header")]


async def test_required_client_auth_comes_before_the_shape() -> None:
    async with running(Settings(require_client_auth=True)) as env:
        await refused(env, "POST", "/clients", 401, content=b"not json")


async def test_client_jwt_of_the_client_registers_and_unregisters() -> None:
    key = Ed25519PrivateKey.generate()
    did = did_of(key)
    async with running(Settings(require_client_auth=True)) as env:
        register = await env.client.post(
            "/clients",
            json=register_body(did),
            headers={"Authorization": f"Bearer {jwt_for(key)}"},
        )
        assert register.status_code == 200
        delete = await env.client.delete(f"/clients/{did}", headers={"Authorization": jwt_for(key)})
        assert delete.status_code == 200
        recorded = await events(env.log)
        assert [type(e) for e in recorded] == [ClientRegistered, ClientUnregistered]


async def test_client_jwt_of_another_client_is_401(env: Env) -> None:
    token = jwt_for(Ed25519PrivateKey.generate())
    answer = await refused(
        env,
        "POST",
        "/clients",
        401,
        json_body=register_body(did_of(Ed25519PrivateKey.generate())),
        headers={"Authorization": token},
    )
    assert fields_of(answer) == [("Authorization", "header")]


async def test_client_jwt_for_another_audience_is_401(env: Env) -> None:
    key = Ed25519PrivateKey.generate()
    token = jwt_for(key, audience="https://elsewhere.example")
    await refused(env, "DELETE", f"/clients/{did_of(key)}", 401, headers={"Authorization": token})


async def test_malformed_client_jwt_is_401_even_when_not_required(env: Env) -> None:
    await refused(
        env, "POST", "/clients", 401, json_body=register_body(), headers={"Authorization": "x"}
    )


# rate limit


async def test_register_and_unregister_are_rate_limited_per_address() -> None:
    async with running(Settings(rate_limit_per_minute=3)) as env:
        for _ in range(2):
            assert (await env.client.post("/clients", json=register_body())).status_code == 200
        assert (await env.client.delete("/clients/z6MkGone")).status_code == 200
        answer = await refused(env, "POST", "/clients", 429, json_body=register_body())
        assert error_names(answer) == ["rate_limited"]
        response = await env.client.delete("/clients/z6MkGone")
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        # the push route is never limited
        for n in range(5):
            pushed = await env.client.post(f"/clients/{LEGACY}", json=legacy_body(f"p{n}"))
            assert pushed.status_code == 202


async def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    async with running(Settings(rate_limit_per_minute=1)) as env:
        statuses = [
            (await env.client.delete("/clients/x", headers={"X-Forwarded-For": a})).status_code
            for a in ["10.0.0.1", "10.0.0.2"]
        ]
        assert statuses == [200, 429]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "counted_as"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "10.0.0.1", "203.0.113.9"),
        ("127.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("127.0.0.1", "198.51.100.7, 10.1.2.3", "198.51.100.7"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3", "198.51.100.7"),
        ("127.0.0.1", "10.1.2.3", "10.1.2.3"),
        (None, "198.51.100.7", "unknown"),
    ],
)
def test_forwarded_for_is_believed_only_from_trusted_proxies(
    peer: str | None, forwarded_for: str | None, counted_as: str
) -> None:
    limiter = RateLimiter(10, trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    assert limiter.client_address(peer, forwarded_for) == counted_as


def test_bad_trusted_proxy_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        RateLimiter(10, trusted_proxies=("proxy.local",))


def test_rate_limit_refills_over_the_minute() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        limiter.hit("a")
    with pytest.raises(RateLimited) as caught:
        limiter.hit("a")
    assert caught.value.retry_after == 1
    limiter.hit("b")
    now[0] += 1.0
    limiter.hit("a")


async def test_rate_limit_zero_turns_it_off() -> None:
    async with running(Settings(rate_limit_per_minute=0)) as env:
        for _ in range(150):
            assert (await env.client.delete("/clients/z6MkGone")).status_code == 200


# failures of the log and of the server


async def test_event_log_unavailable_is_503_with_retry_after() -> None:
    flaky = FlakyLog()
    async with running(log=flaky, inner=flaky.memory) as env:
        assert (await env.client.post("/clients", json=register_body())).status_code == 200
        before = await snapshot(env.log)
        flaky.appends_fail = True
        for method, path, body in [
            ("POST", f"/clients/{LEGACY}", legacy_body("m-503")),
            ("POST", "/clients", register_body()),
            ("DELETE", f"/clients/{LEGACY}", None),
        ]:
            response = await env.client.request(method, path, json=body)
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) > 0
            assert error_names(response.json()) == ["storage_unavailable"]
        assert await snapshot(env.log) == before
        flaky.appends_fail = False
        again = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("m-503"))
        assert again.status_code == 202
        await assert_healthy(env)


async def test_signed_push_may_be_repeated_after_a_503() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    flaky = FlakyLog()
    async with running(Settings(relay_public_key=public), log=flaky, inner=flaky.memory) as env:
        assert (await env.client.post("/clients", json=register_body())).status_code == 200
        content = json.dumps(legacy_body("retry")).encode()
        headers = sign(key, content)
        flaky.appends_fail = True
        first = await env.client.post(f"/clients/{LEGACY}", content=content, headers=headers)
        assert first.status_code == 503
        flaky.appends_fail = False
        second = await env.client.post(f"/clients/{LEGACY}", content=content, headers=headers)
        assert second.status_code == 202


async def test_client_changing_under_every_attempt_is_503() -> None:
    contended = ContendedLog()
    async with running(log=contended, inner=contended) as env:
        answer = await refused(env, "POST", "/clients", 503, json_body=register_body())
        assert error_names(answer) == ["concurrent_update"]
        response = await env.client.delete(f"/clients/{LEGACY}")
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0


async def test_unexpected_exception_is_500_in_the_envelope_without_details() -> None:
    flaky = FlakyLog()
    async with running(log=flaky, inner=flaky.memory) as env:
        flaky.reads_crash = True
        with capture_logs() as logs:
            response = await env.client.post(f"/clients/{LEGACY}", json=legacy_body())
        assert response.status_code == 500
        assert error_names(response.json()) == ["internal_error"]
        assert "secret internal detail" not in response.text
        assert any(entry["event"] == "unhandled_exception" for entry in logs)
        flaky.reads_crash = False
        await assert_healthy(env)


async def test_unknown_route_is_404_in_the_envelope(env: Env) -> None:
    answer = await refused(env, "GET", "/nowhere", 404)
    assert error_names(answer) == ["not_found"]


async def test_wrong_method_is_405_in_the_envelope(env: Env) -> None:
    before = await snapshot(env.log)
    response = await env.client.put(f"/clients/{LEGACY}", json=legacy_body())
    assert response.status_code == 405
    assert error_names(response.json()) == ["method_not_allowed"]
    assert "POST" in response.headers["allow"]
    assert await snapshot(env.log) == before


# observability


async def test_one_log_line_per_request_without_body_or_token(env: Env) -> None:
    key = Ed25519PrivateKey.generate()
    token = jwt_for(key)
    with capture_logs() as logs:
        await env.client.post(
            "/clients",
            json=register_body(did_of(key), token="very-secret-device-token"),
            headers={"Authorization": token, "X-Request-Id": "req-123"},
        )
    lines = [entry for entry in logs if entry["event"] == "http_request"]
    assert len(lines) == 1
    line = lines[0]
    assert {k: line[k] for k in ("method", "route", "status", "request_id")} == {
        "method": "POST",
        "route": "/clients",
        "status": 200,
        "request_id": "req-123",
    }
    assert line["duration_ms"] >= 0
    assert "very-secret-device-token" not in repr(logs)
    assert token not in repr(logs)


async def test_request_id_is_echoed_and_recorded_as_the_cause(env: Env) -> None:
    response = await env.client.post(
        f"/clients/{LEGACY}", json=legacy_body("rid"), headers={"X-Request-Id": "abc-1"}
    )
    assert response.headers["x-request-id"] == "abc-1"
    accepted = (await events(env.log))[-1]
    assert accepted.cause.request_id == "abc-1"
    generated = await env.client.get("/health", headers={"X-Request-Id": "bad id\x7f"})
    assert generated.headers["x-request-id"] not in ("", "bad id")


async def test_metrics_in_prometheus_text(env: Env) -> None:
    await env.client.get("/nowhere")
    response = await env.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert (
        'relaypush_http_requests_total{method="POST",route="/clients/{id}",status="202"} 1' in text
    )
    assert 'relaypush_http_requests_total{method="GET",route="unmatched",status="404"} 1' in text
    assert 'relaypush_events_appended_total{type="client.registered"} 2' in text
    assert 'relaypush_events_appended_total{type="notification.accepted"} 1' in text
    assert 'relaypush_http_request_duration_seconds_count{route="/clients"} 2' in text


async def test_openapi_describes_the_routes(env: Env) -> None:
    response = await env.client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert paths["/clients"]["post"]["summary"] == "Register a client"
    assert paths["/clients/{id}"]["post"]["summary"] == "Push a notification to a client"
    assert paths["/clients/{id}"]["delete"]["summary"] == "Unregister a client"
    assert paths["/{tenant_id}/clients/{id}"]["post"]["requestBody"]["required"] is True
    assert "/health" in paths
    assert (await env.client.get("/schema")).status_code == 200


@pytest.mark.parametrize(
    ("client", "body", "status"),
    [
        (LEGACY, legacy_body("fresh"), 202),
        (LEGACY, legacy_body("seed-1"), 200),
        ("z6MkNobody", legacy_body("m"), 202),
        (LEGACY, {"id": "m", "payload": {"topic": "t", "flags": "1", "blob": "x"}}, 400),
        (LEGACY, {"id": "m", "payload": "ab:1:" + "A" * (2 * 1024 * 1024)}, 413),
        ("a" * 300, legacy_body("m"), 400),
    ],
    ids=["accepted", "duplicate", "unknown-client", "bad-body", "too-large", "long-id"],
)
async def test_the_fast_path_and_the_framework_route_answer_alike(
    client: str, body: dict[str, Any], status: int
) -> None:
    """``/clients/{id}`` is answered by relaypush.http.fastpush, ``/clients/{id}/`` by the
    litestar route; both run the same checks and give the same answers."""
    answers = []
    for path in (f"/clients/{client}", f"/clients/{client}/"):
        async with running() as env:
            for registration in (register_body(LEGACY), register_body(RAW, always_raw=True)):
                assert (await env.client.post("/clients", json=registration)).status_code == 200
            seeded = await env.client.post(f"/clients/{LEGACY}", json=legacy_body("seed-1"))
            assert seeded.status_code == 202
            response = await env.client.post(path, json=body)
            answers.append((response.status_code, response.json(), await snapshot(env.log)))
    (fast_status, fast_body, fast_log), (route_status, route_body, route_log) = answers
    assert fast_status == route_status == status
    assert fast_body == route_body
    assert [(p, s) for p, s, _ in fast_log] == [(p, s) for p, s, _ in route_log]
