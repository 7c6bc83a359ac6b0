"""Tenants over real NATS JetStream and PostgreSQL, delivering to the APNs and FCM stand-ins.

Every row of the contract's tenant table, the credential checks (good and bad ``.p8``, ``.p12``
and service accounts, the last against the stand-in's token endpoint), who may do what, the
isolation of one tenant from another, suspension and deletion as deliveries see them, CORS, rate
limits, key rotation, rebuilds that keep the credentials, and a search of the whole log, every
table and the captured logs for any secret. The app runs in-process (tests/asgi.py); providers
reach the stand-ins through the endpoint settings, as ``relaypush serve`` reaches Apple and
Google. Tests wait on events in the log, never on the clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12
from cryptography.x509.oid import NameOID
from psycopg import sql
from structlog.testing import capture_logs

from eventstore.jetstream import JetStreamEventLog
from projections.rebuild import rebuild
from projections.runner import Projector
from relaypush.auth.tenant_jwt import make_tenant_jwt
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.noop import NoopProvider
from relaypush.delivery.registry import ProviderRegistry, Unavailable
from relaypush.domain.credentials import ApnsTokenKey
from relaypush.domain.events import (
    AnyEvent,
    NotificationDelivered,
    NotificationDeliveryFailed,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantDeleted,
    TenantSuspended,
    TenantUnsuspended,
    decode_event,
)
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.sealing import Keyring, generate_key
from relaypush.service import RelayService
from relaypush.tenancy.store import PostgresCredentialStore, open_credential_store, rotate_key
from relaypush.testing.apns import ApnsStandIn, reason
from relaypush.testing.fcm import FcmStandIn
from relaypush.testing.oauth import ServiceAccount
from relaypush.testing.tls import self_signed_client
from tests.asgi import asgi_client

pytestmark = pytest.mark.integration

ADMIN = "admin-" + secrets.token_urlsafe(24)
JWT_SECRET = "jwt-" + secrets.token_urlsafe(24)
TOPIC = "com.example.wallet"
TEAM_ID = "TEAM123456"
BLOB = "ZW5jcnlwdGVkLWVudmVsb3BlLWJ5dGVzLy8rKz09"

E = TypeVar("E")


def of(kind: type[E], events: list[AnyEvent]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def p8(curve: ec.EllipticCurve | None = None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, pem


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def as_tenant(tenant_id: str, *, exp: float | None = None) -> dict[str, str]:
    jwt = make_tenant_jwt(JWT_SECRET, tenant_id=tenant_id, exp=exp or time.time() + 300)
    return {"Authorization": f"Bearer {jwt}"}


def expired_p12(password: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services"),
            x509.NameAttribute(NameOID.USER_ID, TOPIC),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=400))
        .not_valid_after(now - timedelta(days=35))
        .sign(key, hashes.SHA256())
    )
    encryption = serialization.BestAvailableEncryption(password.encode())
    return pkcs12.serialize_key_and_certificates(b"apns", key, cert, None, encryption)


@dataclass
class Stack:
    http: httpx.AsyncClient
    log: JetStreamEventLog
    settings: Settings
    database_url: str
    store: PostgresCredentialStore | None
    registry: ProviderRegistry
    apns: ApnsStandIn
    sandbox: ApnsStandIn
    fcm: FcmStandIn
    key_ids: Iterator[str] = field(
        default_factory=lambda: iter(f"KEY{n:07d}" for n in range(1, 10**6))
    )

    async def events(self) -> list[AnyEvent]:
        return [decode_event(e.data) async for e in self.log.read()]

    async def wait_for(
        self, what: Callable[[list[AnyEvent]], bool], within: float = 30
    ) -> list[AnyEvent]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            events = await self.events()
            if what(events):
                return events
            await asyncio.sleep(0.05)
        raise AssertionError(f"log never satisfied the condition: {await self.events()}")

    async def create(self, tenant_id: str) -> None:
        r = await self.http.post("/tenants", json={"id": tenant_id}, headers=admin())
        assert r.status_code == 200, r.text

    def trust_key(self, key: ec.EllipticCurvePrivateKey) -> str:
        """A new key id for ``key``, known to both APNs stand-ins."""
        key_id = next(self.key_ids)
        for stand_in in (self.apns, self.sandbox):
            stand_in.add_key(key_id, TEAM_ID, key)
        return key_id

    async def upload_p8(
        self,
        tenant_id: str,
        pem: bytes | None = None,
        *,
        key_id: str | None = None,
        topic: str = TOPIC,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        if pem is None:
            key, pem = p8()
            key_id = key_id or self.trust_key(key)
        return await self.http.post(
            f"/tenants/{tenant_id}/apns",
            data={
                "apns_topic": topic,
                "apns_key_id": key_id or "KEY0000000",
                "apns_team_id": TEAM_ID,
            },
            files={"apns_pkcs8_pem": ("AuthKey.p8", pem, "application/octet-stream")},
            headers=dict(headers or admin()),
        )

    async def upload_fcm(
        self,
        tenant_id: str,
        project: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        document = json.dumps(self.fcm.service_account_info(project)).encode()
        return await self.http.post(
            f"/tenants/{tenant_id}/fcm_v1",
            files={"credentials": ("service-account.json", document, "application/json")},
            headers=dict(headers or admin()),
        )

    async def register(
        self, tenant_id: str, client_id: str, kind: str, token: str
    ) -> httpx.Response:
        return await self.http.post(
            f"/{tenant_id}/clients", json={"client_id": client_id, "type": kind, "token": token}
        )

    async def push(self, tenant_id: str, client_id: str, message_id: str) -> httpx.Response:
        return await self.http.post(
            f"/{tenant_id}/clients/{client_id}",
            json={"id": message_id, "payload": {"topic": "t0", "flags": 1, "blob": BLOB}},
        )

    async def stored_rows(self, tenant_id: str) -> list[tuple[str, str, str]]:
        query = sql.SQL(
            "SELECT kind, fingerprint, key_id FROM {} WHERE tenant_id = %s ORDER BY kind"
        ).format(sql.Identifier(self.settings.credentials_schema, "tenant_credentials"))
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            cur = await conn.execute(query, (tenant_id,))
            return [(str(a), str(b), str(c)) for a, b, c in await cur.fetchall()]


@contextlib.asynccontextmanager
async def open_stack(
    nats_url: str,
    database_url: str,
    name: str,
    tmp: Path,
    *,
    with_store: bool = True,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    async with ApnsStandIn() as apns, ApnsStandIn() as sandbox, FcmStandIn() as fcm:
        ca_bundle = tmp / f"{name}-apns-ca.pem"
        ca_bundle.write_bytes(apns.ca_file.read_bytes() + sandbox.ca_file.read_bytes())
        options: dict[str, Any] = {
            "stream_name": name.upper(),
            "subject_prefix": name,
            "database_schema": name,
            "credentials_schema": f"{name}_credentials",
            "credentials_key": generate_key(),
            "admin_token": ADMIN,
            "tenant_jwt_secret": JWT_SECRET,
            "rate_limit_per_minute": 0,
            "apns_url": apns.url,
            "apns_sandbox_url": sandbox.url,
            "apns_ca_file": ca_bundle,
            "fcm_url": fcm.url,
            "fcm_ca_file": fcm.ca_file,
            "fcm_token_hosts": ("127.0.0.1",),
            "send_timeout": 5.0,
            "public_url": "https://push.example.com",
        }
        options.update(overrides)
        settings = Settings(**options)
        log = await JetStreamEventLog.connect(nats_url, stream=name.upper(), prefix=name)
        metrics = Registry()
        async with contextlib.AsyncExitStack() as exits:
            store = (
                await exits.enter_async_context(open_credential_store(settings, database_url))
                if with_store
                else None
            )
            registry = ProviderRegistry.from_settings(
                settings, log, default={"noop": NoopProvider()}, credentials=store, metrics=metrics
            )
            dispatcher = Dispatcher(
                log,
                registry,
                deadline=60.0,
                durable=f"d-{name}",
                send_timeout=settings.send_timeout,
                retry_base=0.05,
                retry_cap=0.2,
                hold_recheck=0.2,
                metrics=metrics,
            )
            service = RelayService(
                log, enabled_providers=lambda _: frozenset({"noop"}), metrics=metrics
            )
            app = create_app(settings=settings, service=service, metrics=metrics, credentials=store)
            stop = asyncio.Event()
            worker = asyncio.create_task(dispatcher.run(stop))
            try:
                async with asgi_client(app) as http:
                    yield Stack(
                        http, log, settings, database_url, store, registry, apns, sandbox, fcm
                    )
            finally:
                stop.set()
                await worker
                await registry.close()
                await log.close()


@pytest_asyncio.fixture(name="stack")
async def fx_stack(
    nats_url: str, database_url: str, unique_name: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    async with open_stack(nats_url, database_url, unique_name, tmp_path) as stack:
        yield stack


def fields(response: httpx.Response) -> list[tuple[str, str]]:
    body = response.json()
    assert body["status"] == "FAILED", body
    return [(f["field"], f["location"]) for f in body["fields"]]


def errors(response: httpx.Response) -> list[str]:
    return [e["name"] for e in response.json()["errors"]]


# --------------------------------------------------------------------------------------------
# the contract's tenant table
# --------------------------------------------------------------------------------------------


async def test_create_is_an_upsert_and_get_shows_the_tenant(stack: Stack) -> None:
    for _ in range(2):
        r = await stack.http.post("/tenants", json={"id": "acme"}, headers=admin())
        assert r.status_code == 200
        assert r.json() == {"url": "https://push.example.com/acme"}
    assert len(of(TenantCreated, await stack.events())) == 1
    r = await stack.http.get("/tenants/acme", headers=as_tenant("acme"))
    assert r.status_code == 200
    assert r.json() == {
        "url": "https://push.example.com/acme",
        "enabled_providers": [],
        "apns_topic": None,
        "apns_type": None,
        "suspended": False,
        "suspended_reason": None,
        "vapid_public_key": None,
    }


async def test_a_tenant_may_create_itself_with_its_own_jwt_only(stack: Stack) -> None:
    assert (
        await stack.http.post("/tenants", json={"id": "self"}, headers=as_tenant("self"))
    ).status_code == 200
    r = await stack.http.post("/tenants", json={"id": "other"}, headers=as_tenant("self"))
    assert r.status_code == 401
    assert fields(r) == [("Authorization", "header")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "a b"}, "id"),
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({}, "id"),
        ([1], "body"),
        ({"id": "tenants"}, "id"),
    ],
)
async def test_a_bad_create_names_the_field(stack: Stack, body: Any, field: str) -> None:
    r = await stack.http.post("/tenants", json=body, headers=admin())
    assert r.status_code == 400
    assert fields(r) == [(field, "body")]


async def test_an_unknown_tenant_is_404(stack: Stack) -> None:
    r = await stack.http.get("/tenants/nobody", headers=admin())
    assert r.status_code == 404
    assert errors(r) == ["tenant_not_found"]
    assert fields(r) == [("id", "path")]


async def test_delete_is_recorded_idempotent_and_forgets_the_tenant(stack: Stack) -> None:
    await stack.create("gone")
    assert (await stack.upload_p8("gone")).status_code == 200
    assert await stack.stored_rows("gone")
    for _ in range(2):
        r = await stack.http.delete("/tenants/gone", headers=as_tenant("gone"))
        assert r.status_code == 200
        assert r.json() == {"success": True}
    (deleted,) = of(TenantDeleted, await stack.events())
    assert deleted.tenant_id == "gone"
    assert (await stack.http.get("/tenants/gone", headers=admin())).status_code == 404
    assert await stack.stored_rows("gone") == [], "a deleted tenant's credentials are destroyed"
    await stack.create("gone")
    again = (await stack.http.get("/tenants/gone", headers=admin())).json()
    assert again["enabled_providers"] == [], "created again, it starts empty"


async def test_the_default_tenant_always_exists_and_keeps_its_settings(stack: Stack) -> None:
    r = await stack.http.get(f"/tenants/{DEFAULT_TENANT}", headers=admin())
    assert r.status_code == 200
    assert r.json()["enabled_providers"] == []
    assert (
        await stack.http.delete(f"/tenants/{DEFAULT_TENANT}", headers=admin())
    ).status_code == 400
    r = await stack.upload_p8(DEFAULT_TENANT)
    assert r.status_code == 400
    assert fields(r) == [("id", "path")]


async def test_apns_token_key_is_checked_stored_and_shown(stack: Stack) -> None:
    await stack.create("acme")
    r = await stack.upload_p8("acme", headers=as_tenant("acme"))
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}
    body = (await stack.http.get("/tenants/acme", headers=as_tenant("acme"))).json()
    assert body["enabled_providers"] == ["apns", "apns-sandbox"]
    assert (body["apns_topic"], body["apns_type"]) == (TOPIC, "token")
    (changed,) = of(TenantCredentialsChanged, await stack.events())
    assert (changed.kind, changed.apns_topic, changed.apns_type) == ("apns", TOPIC, "token")
    assert [(k, f) for k, f, _ in await stack.stored_rows("acme")] == [
        ("apns", changed.fingerprint)
    ]


async def test_parts_may_be_text_fields(stack: Stack) -> None:
    await stack.create("acme")
    key, pem = p8()
    key_id = stack.trust_key(key)
    r = await stack.http.post(
        "/tenants/acme/apns",
        data={
            "apns_topic": TOPIC,
            "apns_key_id": key_id,
            "apns_team_id": TEAM_ID,
            "apns_pkcs8_pem": pem.decode(),
        },
        headers=admin(),
    )
    assert r.status_code == 200, r.text
    certificate = self_signed_client("Apple Push Services", user_id=TOPIC)
    r = await stack.http.post(
        "/tenants/acme/apns",
        data={
            "apns_topic": TOPIC,
            "apns_certificate": base64.b64encode(certificate.p12()).decode(),
            "apns_certificate_password": certificate.password,
        },
        headers=admin(),
    )
    assert r.status_code == 200, r.text
    info = json.dumps(stack.fcm.service_account_info())
    r = await stack.http.post("/tenants/acme/fcm_v1", data={"credentials": info}, headers=admin())
    assert r.status_code == 200, r.text
    body = (await stack.http.get("/tenants/acme", headers=admin())).json()
    assert body["enabled_providers"] == ["apns", "apns-sandbox", "fcm"]
    assert body["apns_type"] == "certificate"
    assert [k for k, _, _ in await stack.stored_rows("acme")] == ["apns", "fcm_v1"], (
        "replaced key pruned"
    )


async def test_apns_certificate_is_checked_stored_and_shown(stack: Stack) -> None:
    await stack.create("acme")
    certificate = self_signed_client("Apple Push Services", user_id=TOPIC)
    r = await stack.http.post(
        "/tenants/acme/apns",
        data={"apns_topic": TOPIC, "apns_certificate_password": certificate.password},
        files={"apns_certificate": ("cert.p12", certificate.p12(), "application/x-pkcs12")},
        headers=as_tenant("acme"),
    )
    assert r.status_code == 200, r.text
    body = (await stack.http.get("/tenants/acme", headers=admin())).json()
    assert (body["apns_topic"], body["apns_type"]) == (TOPIC, "certificate")


def _bad_apns_cases() -> list[tuple[str, dict[str, str], dict[str, bytes], list[str]]]:
    _, good_pem = p8()
    _, p384 = p8(ec.SECP384R1())
    certificate = self_signed_client(
        "Apple Push Services", user_id=TOPIC, password="right-password"
    )
    other_app = self_signed_client("Apple Push Services", user_id="com.other.app")
    key_fields = {"apns_topic": TOPIC, "apns_key_id": "KEY1234567", "apns_team_id": TEAM_ID}
    return [
        (
            "no topic",
            {"apns_key_id": "KEY1234567", "apns_team_id": TEAM_ID},
            {"apns_pkcs8_pem": good_pem},
            ["apns_topic"],
        ),
        (
            "bad topic",
            {**key_fields, "apns_topic": "com example"},
            {"apns_pkcs8_pem": good_pem},
            ["apns_topic"],
        ),
        ("nothing", {"apns_topic": TOPIC}, {}, ["apns_certificate", "apns_pkcs8_pem"]),
        (
            "both",
            {**key_fields, "apns_certificate_password": "x"},
            {"apns_pkcs8_pem": good_pem, "apns_certificate": certificate.p12()},
            ["apns_certificate", "apns_pkcs8_pem"],
        ),
        (
            "no key id",
            {"apns_topic": TOPIC, "apns_team_id": TEAM_ID},
            {"apns_pkcs8_pem": good_pem},
            ["apns_key_id"],
        ),
        (
            "bad team id",
            {**key_fields, "apns_team_id": "team"},
            {"apns_pkcs8_pem": good_pem},
            ["apns_team_id"],
        ),
        (
            "garbage key",
            key_fields,
            {"apns_pkcs8_pem": b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"},
            ["apns_pkcs8_pem"],
        ),
        ("not a key", key_fields, {"apns_pkcs8_pem": b"hello"}, ["apns_pkcs8_pem"]),
        ("P-384 key", key_fields, {"apns_pkcs8_pem": p384}, ["apns_pkcs8_pem"]),
        (
            "wrong password",
            {"apns_topic": TOPIC, "apns_certificate_password": "wrong-password"},
            {"apns_certificate": certificate.p12()},
            ["apns_certificate_password"],
        ),
        (
            "not a p12",
            {"apns_topic": TOPIC, "apns_certificate_password": "x"},
            {"apns_certificate": b"GIF89a"},
            ["apns_certificate"],
        ),
        (
            "expired",
            {"apns_topic": TOPIC, "apns_certificate_password": "pw-expired"},
            {"apns_certificate": expired_p12("pw-expired")},
            ["apns_certificate"],
        ),
        (
            "another app",
            {"apns_topic": TOPIC, "apns_certificate_password": other_app.password},
            {"apns_certificate": other_app.p12()},
            ["apns_topic"],
        ),
    ]


@pytest.mark.parametrize(
    ("case", "data", "files", "named"), _bad_apns_cases(), ids=[c[0] for c in _bad_apns_cases()]
)
async def test_a_bad_apns_upload_is_400_naming_the_field(
    stack: Stack, case: str, data: dict[str, str], files: dict[str, bytes], named: list[str]
) -> None:
    await stack.create("acme")
    before = await stack.log.last_position()
    r = await stack.http.post(
        "/tenants/acme/apns",
        data=data,
        files={k: (k, v, "application/octet-stream") for k, v in files.items()} or None,
        headers=admin(),
    )
    assert r.status_code == 400, (case, r.text)
    assert fields(r) == [(name, "body") for name in named]
    assert all(f["description"] for f in r.json()["fields"])
    assert await stack.log.last_position() == before, "nothing is recorded"
    assert await stack.stored_rows("acme") == [], "nothing is stored"


async def test_a_body_that_is_not_a_form_names_body(stack: Stack) -> None:
    await stack.create("acme")
    r = await stack.http.post(
        "/tenants/acme/apns",
        content=b"--x\r\ngarbage",
        headers={**admin(), "content-type": "multipart/form-data; boundary=zz"},
    )
    assert r.status_code == 400
    assert fields(r) == [("body", "body")]


async def test_an_upload_over_256_kib_is_413(stack: Stack) -> None:
    await stack.create("acme")
    r = await stack.http.post(
        "/tenants/acme/fcm_v1",
        files={"credentials": ("sa.json", b"{" + b" " * (256 * 1024), "application/json")},
        headers=admin(),
    )
    assert r.status_code == 413
    assert fields(r) == [("body", "body")]


async def test_an_fcm_service_account_must_obtain_a_token_before_it_is_stored(stack: Stack) -> None:
    await stack.create("acme")
    grants = len(stack.fcm.oauth.grants)
    r = await stack.upload_fcm("acme", "proj-a", headers=as_tenant("acme"))
    assert r.status_code == 200, r.text
    assert len(stack.fcm.oauth.grants) == grants + 1
    assert stack.fcm.oauth.grants[-1].token is not None
    body = (await stack.http.get("/tenants/acme", headers=admin())).json()
    assert body["enabled_providers"] == ["fcm"]
    (changed,) = of(TenantCredentialsChanged, await stack.events())
    assert (changed.kind, changed.fcm_project_id) == ("fcm_v1", "proj-a")


def _bad_accounts(fcm: FcmStandIn) -> list[tuple[str, bytes, str]]:
    good = fcm.service_account_info("proj-a")
    stranger = ServiceAccount.generate("proj-x").info(fcm.token_url)
    return [
        ("not json", b"{", "not JSON"),
        ("not an object", b"[]", "JSON object"),
        ("wrong type", json.dumps({**good, "type": "authorized_user"}).encode(), "service account"),
        (
            "missing key",
            json.dumps({k: v for k, v in good.items() if k != "private_key"}).encode(),
            "private_key",
        ),
        (
            "foreign host",
            json.dumps({**good, "token_uri": "https://169.254.169.254/token"}).encode(),
            "allowed host",
        ),
        (
            "plain http",
            json.dumps({**good, "token_uri": good["token_uri"].replace("https", "http")}).encode(),
            "https",
        ),
        ("refused", json.dumps(stranger).encode(), "refused"),
        (
            "unreachable",
            json.dumps({**good, "token_uri": "https://127.0.0.1:1/token"}).encode(),
            "no access token",
        ),
        (
            "bad key",
            json.dumps({**good, "private_key": "-----BEGIN PRIVATE KEY-----\nx\n"}).encode(),
            "usable",
        ),
    ]


async def test_a_bad_service_account_is_400_naming_credentials(stack: Stack) -> None:
    await stack.create("acme")
    before = await stack.log.last_position()
    for case, document, why in _bad_accounts(stack.fcm):
        r = await stack.http.post(
            "/tenants/acme/fcm_v1",
            files={"credentials": ("sa.json", document, "application/json")},
            headers=admin(),
        )
        assert r.status_code == 400, (case, r.text)
        assert fields(r) == [("credentials", "body")], case
        assert why in r.json()["fields"][0]["description"], (case, r.text)
    r = await stack.http.post(
        "/tenants/acme/fcm_v1", files={}, data={"other": "x"}, headers=admin()
    )
    assert r.status_code == 400
    assert fields(r) == [("credentials", "body")]
    assert await stack.log.last_position() == before
    assert await stack.stored_rows("acme") == []


async def test_the_legacy_fcm_route_is_410_with_an_explanation(stack: Stack) -> None:
    await stack.create("acme")
    r = await stack.http.post("/tenants/acme/fcm", data={"api_key": "AAAA"}, headers=admin())
    assert r.status_code == 410
    assert errors(r) == ["legacy_fcm_retired"]
    assert "fcm_v1" in r.json()["errors"][0]["description"]


async def test_removing_credentials_is_204_and_forgets_them(stack: Stack) -> None:
    await stack.create("acme")
    assert (await stack.upload_p8("acme")).status_code == 200
    assert (await stack.upload_fcm("acme", "proj-a")).status_code == 200
    for _ in range(2):
        r = await stack.http.delete("/tenants/acme/apns", headers=as_tenant("acme"))
        assert r.status_code == 204
        assert r.content == b""
    assert len(of(TenantCredentialsRemoved, await stack.events())) == 1
    assert [k for k, _, _ in await stack.stored_rows("acme")] == ["fcm_v1"]
    body = (await stack.http.get("/tenants/acme", headers=admin())).json()
    assert (body["enabled_providers"], body["apns_topic"], body["apns_type"]) == (
        ["fcm"],
        None,
        None,
    )
    r = await stack.register("acme", "wallet", "apns", "a1" * 32)
    assert r.status_code == 400
    assert errors(r) == ["provider_not_available"]
    assert (await stack.http.delete("/tenants/acme/fcm_v1", headers=admin())).status_code == 204
    assert await stack.stored_rows("acme") == []
    assert (await stack.http.delete("/tenants/nobody/fcm_v1", headers=admin())).status_code == 404


async def test_uploads_without_a_credentials_key_are_503(
    nats_url: str, database_url: str, unique_name: str, tmp_path: Path
) -> None:
    async with open_stack(nats_url, database_url, unique_name, tmp_path, with_store=False) as stack:
        await stack.create("acme")
        r = await stack.upload_p8("acme")
        assert r.status_code == 503
        assert errors(r) == ["credential_storage_not_configured"]


# --------------------------------------------------------------------------------------------
# client routes of tenants
# --------------------------------------------------------------------------------------------


async def test_client_routes_of_an_unknown_tenant_are_400_in_the_path(stack: Stack) -> None:
    for r in (
        await stack.register("nobody", "wallet", "noop", "tok"),
        await stack.push("nobody", "wallet", "m1"),
        await stack.http.delete("/nobody/clients/wallet"),
    ):
        assert r.status_code == 400
        assert fields(r) == [("tenant_id", "path")]


async def test_each_tenant_delivers_with_its_own_credentials(stack: Stack) -> None:
    for tenant, project in (("a", "proj-a"), ("b", "proj-b")):
        await stack.create(tenant)
        assert (await stack.upload_fcm(tenant, project)).status_code == 200
    await stack.create("ios")
    assert (await stack.upload_p8("ios")).status_code == 200
    # one client id under two tenants is two clients
    assert (await stack.register("a", "wallet", "fcm", "token-a")).status_code == 200
    assert (await stack.register("b", "wallet", "fcm", "token-b")).status_code == 200
    assert (await stack.register("ios", "wallet", "apns", "c3" * 32)).status_code == 200
    assert (await stack.register("ios", "dev", "apns-sandbox", "d4" * 32)).status_code == 200
    for tenant, client in (("a", "wallet"), ("b", "wallet"), ("ios", "wallet"), ("ios", "dev")):
        assert (await stack.push(tenant, client, f"{tenant}-{client}")).status_code == 202
    await stack.wait_for(lambda ev: len(of(NotificationDelivered, ev)) == 4)
    projects = {r.device_token: r.project for r in stack.fcm.requests}
    assert projects == {"token-a": "proj-a", "token-b": "proj-b"}
    assert [r.token for r in stack.apns.requests] == ["c3" * 32]
    assert [r.token for r in stack.sandbox.requests] == ["d4" * 32]
    assert stack.apns.requests[0].headers["apns-topic"] == TOPIC
    delivered = {
        (d.tenant_id, d.client_id) for d in of(NotificationDelivered, await stack.events())
    }
    assert delivered == {("a", "wallet"), ("b", "wallet"), ("ios", "wallet"), ("ios", "dev")}


# --------------------------------------------------------------------------------------------
# who may do what
# --------------------------------------------------------------------------------------------


def _tenant_requests(tenant: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", f"/tenants/{tenant}", {}),
        ("DELETE", f"/tenants/{tenant}", {}),
        ("POST", f"/tenants/{tenant}/apns", {"data": {"apns_topic": TOPIC}}),
        ("POST", f"/tenants/{tenant}/fcm_v1", {"data": {"credentials": "{}"}}),
        ("POST", f"/tenants/{tenant}/fcm", {}),
        ("DELETE", f"/tenants/{tenant}/apns", {}),
        ("DELETE", f"/tenants/{tenant}/fcm_v1", {}),
        ("POST", "/tenants", {"json": {"id": tenant}}),
    ]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        ADMIN,
        "Basic " + base64.b64encode(b"admin:x").decode(),
        "Bearer wrong-admin-token",
        "Bearer "
        + make_tenant_jwt(
            "another-secret-of-at-least-32-bytes", tenant_id="acme", exp=time.time() + 300
        ),
        "Bearer " + make_tenant_jwt(JWT_SECRET, tenant_id="acme", exp=time.time() - 3600),
        "Bearer " + make_tenant_jwt(JWT_SECRET, tenant_id="other", exp=time.time() + 300),
    ],
    ids=[
        "missing",
        "empty",
        "no scheme",
        "basic",
        "wrong token",
        "wrong secret",
        "expired",
        "other tenant",
    ],
)
async def test_wrong_or_missing_credentials_are_401_naming_the_header(
    stack: Stack, authorization: str | None
) -> None:
    await stack.create("acme")
    before = await stack.log.last_position()
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, extra in _tenant_requests("acme"):
        r = await stack.http.request(method, path, headers=headers, **extra)
        assert r.status_code == 401, (method, path, r.text)
        assert fields(r) == [("Authorization", "header")]
        assert errors(r) == ["unauthorized"]
    assert await stack.log.last_position() == before


async def test_admin_routes_take_the_admin_token_only(stack: Stack) -> None:
    await stack.create("acme")
    r = await stack.http.get("/tenants", headers=as_tenant("acme"))
    assert r.status_code == 401
    r = await stack.http.get("/tenants", headers=admin())
    assert r.status_code == 200
    assert r.json() == {"tenants": [DEFAULT_TENANT, "acme"]}


async def test_tenant_a_cannot_read_change_push_to_or_delete_tenant_b(
    nats_url: str, database_url: str, unique_name: str, tmp_path: Path
) -> None:
    relay_key = Ed25519PrivateKey.generate()
    relay_public = relay_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    async with open_stack(
        nats_url, database_url, unique_name, tmp_path, relay_public_key=relay_public
    ) as stack:
        for tenant in ("a", "b"):
            await stack.create(tenant)
            assert (await stack.upload_fcm(tenant, f"proj-{tenant}")).status_code == 200
        assert (await stack.register("b", "wallet", "fcm", "token-b")).status_code == 200
        before = await stack.events()
        b_view = (await stack.http.get("/tenants/b", headers=admin())).json()
        a_jwt = as_tenant("a")
        for method, path, extra in _tenant_requests("b"):
            r = await stack.http.request(method, path, headers=a_jwt, **extra)
            assert r.status_code == 401, (method, path)
            assert fields(r) == [("Authorization", "header")]
        # B's clients: a tenant JWT is no client JWT and no relay signature
        r = await stack.http.post(
            "/b/clients",
            json={"client_id": "wallet", "type": "fcm", "token": "evil"},
            headers=a_jwt,
        )
        assert r.status_code == 401
        assert (await stack.http.delete("/b/clients/wallet", headers=a_jwt)).status_code == 401
        r = await stack.http.post(
            "/b/clients/wallet",
            json={"id": "m1", "payload": {"topic": "t", "flags": 1, "blob": BLOB}},
            headers=a_jwt,
        )
        assert r.status_code == 401
        assert {f for f, _ in fields(r)} == {"X-Ed25519-Signature", "X-Ed25519-Timestamp"}
        assert await stack.events() == before, "nothing about B changed"
        assert (await stack.http.get("/tenants/b", headers=admin())).json() == b_view
        assert stack.fcm.sent_to("token-b") == []
        # and A's own JWT still opens A
        assert (await stack.http.get("/tenants/a", headers=a_jwt)).status_code == 200


# --------------------------------------------------------------------------------------------
# suspension and deletion, as deliveries see them
# --------------------------------------------------------------------------------------------


async def test_a_suspended_tenant_is_held_while_others_deliver_and_new_credentials_lift_it(
    stack: Stack,
) -> None:
    for tenant in ("bad", "good"):
        await stack.create(tenant)
        assert (await stack.upload_p8(tenant)).status_code == 200
    stack.apns.script("b0" * 32, reason(403, "InvalidProviderToken"))
    assert (await stack.register("bad", "wallet", "apns", "b0" * 32)).status_code == 200
    assert (await stack.register("good", "wallet", "apns", "a0" * 32)).status_code == 200
    assert (await stack.push("bad", "wallet", "m1")).status_code == 202
    await stack.wait_for(lambda ev: bool(of(TenantSuspended, ev)))
    view = (await stack.http.get("/tenants/bad", headers=as_tenant("bad"))).json()
    assert view["suspended"] is True
    assert "InvalidProviderToken" in view["suspended_reason"]
    deadline = time.monotonic() + 10
    for attempt in range(1000):  # the push path trusts what it read of a tenant for a second
        r = await stack.push("bad", "wallet", f"m-{attempt}")
        assert r.status_code == 202
        if r.json()["status"] == "FAILED":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert errors(r) == ["tenant_suspended"]
    assert (await stack.push("good", "wallet", "g1")).status_code == 202
    await stack.wait_for(
        lambda ev: any(d.tenant_id == "good" for d in of(NotificationDelivered, ev))
    )
    # new credentials lift the suspension, in this process at once
    assert (await stack.upload_p8("bad")).status_code == 200
    assert of(TenantUnsuspended, await stack.events())
    assert (await stack.http.get("/tenants/bad", headers=admin())).json()["suspended"] is False
    r = await stack.push("bad", "wallet", "after")
    assert (r.status_code, r.json()) == (202, {"status": "OK"})
    await stack.wait_for(
        lambda ev: any(d.message_id == "after" for d in of(NotificationDelivered, ev))
    )


async def test_unsuspending_a_tenant_delivers_what_it_held_once(stack: Stack) -> None:
    await stack.create("held")
    assert (await stack.upload_p8("held")).status_code == 200
    stack.apns.script("c1" * 32, reason(403, "InvalidProviderToken"))  # once, then 200
    assert (await stack.register("held", "wallet", "apns", "c1" * 32)).status_code == 200
    assert (await stack.push("held", "wallet", "m1")).status_code == 202
    await stack.wait_for(lambda ev: bool(of(TenantSuspended, ev)))
    events = await stack.events()
    (suspended,) = of(TenantSuspended, events)
    (uploaded,) = [c for c in of(TenantCredentialsChanged, events) if c.tenant_id == "held"]
    assert (suspended.provider, suspended.fingerprint) == ("apns", uploaded.fingerprint)
    for attempt in range(1000):  # the push path trusts what it read of a tenant for a second
        r = await stack.push("held", "wallet", f"held-{attempt}")
        if r.json()["status"] == "FAILED":
            break
        await asyncio.sleep(0.1)
    held = f"held-{attempt}"
    # who may lift it: the tenant's JWT or the admin token; nobody else
    r = await stack.http.post("/tenants/held/unsuspend")
    assert r.status_code == 401
    r = await stack.http.post("/tenants/held/unsuspend", headers=as_tenant("other"))
    assert r.status_code == 401
    r = await stack.http.post("/tenants/nowhere/unsuspend", headers=admin())
    assert r.status_code == 404
    r = await stack.http.post("/tenants/held/unsuspend", headers=as_tenant("held"))
    assert (r.status_code, r.json()) == (200, {"status": "OK", "suspended": False})
    events = await stack.wait_for(
        lambda ev: {"m1", held} <= {d.message_id for d in of(NotificationDelivered, ev)}
    )
    assert [e.tenant_id for e in of(TenantUnsuspended, events)] == ["held"]
    # idempotent: nothing more is appended
    r = await stack.http.post("/tenants/held/unsuspend", headers=admin())
    assert (r.status_code, r.json()) == (200, {"status": "OK", "suspended": False})
    assert len(of(TenantUnsuspended, await stack.events())) == 1
    delivered = [d.message_id for d in of(NotificationDelivered, await stack.events())]
    assert sorted(delivered) == sorted(set(delivered)), "each held notification once"


async def test_deleting_a_tenant_stops_its_deliveries_and_is_recorded(stack: Stack) -> None:
    await stack.create("doomed")
    assert (await stack.upload_fcm("doomed", "proj-d")).status_code == 200
    stack.fcm.device("busy-token").error(503, "UNAVAILABLE")  # retried for as long as it lasts
    assert (await stack.register("doomed", "wallet", "fcm", "busy-token")).status_code == 200
    assert (await stack.push("doomed", "wallet", "m1")).status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDeliveryFailed, ev)))
    assert (
        await stack.http.delete("/tenants/doomed", headers=as_tenant("doomed"))
    ).status_code == 200
    events = await stack.wait_for(
        lambda ev: any(f.permanent for f in of(NotificationDeliveryFailed, ev))
    )
    final = of(NotificationDeliveryFailed, events)[-1]
    assert (final.permanent, final.reason, final.tenant_id) == (True, "tenant_deleted", "doomed")
    assert of(TenantDeleted, events)
    sent = len(stack.fcm.sent_to("busy-token"))
    for r in (
        await stack.push("doomed", "wallet", "m2"),
        await stack.register("doomed", "other", "fcm", "tok"),
    ):
        assert r.status_code == 400
        assert fields(r) == [("tenant_id", "path")]
    assert await stack.registry.lookup("doomed", "fcm") == Unavailable("tenant_deleted")
    assert len(stack.fcm.sent_to("busy-token")) == sent
    assert await stack.stored_rows("doomed") == []
    projector = Projector(stack.log, stack.database_url, schema=stack.settings.database_schema)
    await projector.catch_up()
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT deleted_at IS NOT NULL FROM {} WHERE tenant_id = 'doomed'").format(
                sql.Identifier(stack.settings.database_schema, "tenants")
            )
        )
        assert await cur.fetchone() == (True,)
        cur = await conn.execute(
            sql.SQL(
                "SELECT client_id, active, unregister_reason FROM {} WHERE tenant_id = 'doomed'"
            ).format(sql.Identifier(stack.settings.database_schema, "devices"))
        )
        assert await cur.fetchall() == [("wallet", False, "tenant_deleted")]


# --------------------------------------------------------------------------------------------
# CORS and rate limits
# --------------------------------------------------------------------------------------------


async def test_tenant_routes_send_cors_headers_and_answer_preflights(stack: Stack) -> None:
    await stack.create("acme")
    origin = {"Origin": "https://dashboard.example"}
    ok = await stack.http.get("/tenants/acme", headers={**origin, **admin()})
    refused = await stack.http.get("/tenants/acme", headers=origin)
    missing = await stack.http.get("/tenants/nobody", headers={**origin, **admin()})
    for r in (ok, refused, missing):
        assert r.headers["access-control-allow-origin"] == "*"
    assert (ok.status_code, refused.status_code, missing.status_code) == (200, 401, 404)
    preflight = await stack.http.options(
        "/tenants/acme",
        headers={
            **origin,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    relay = await stack.register("acme", "wallet", "noop", "tok")
    assert "access-control-allow-origin" not in relay.headers


async def test_rate_limits_count_per_address_believing_only_trusted_proxies(
    nats_url: str, database_url: str, unique_name: str, tmp_path: Path
) -> None:
    async with open_stack(
        nats_url, database_url, unique_name, tmp_path, rate_limit_per_minute=3
    ) as stack:
        await stack.create("acme")  # 1
        await stack.register("acme", "wallet", "noop", "tok")  # 2
        assert (await stack.http.delete("/acme/clients/other")).status_code == 200  # 3
        r = await stack.http.get("/tenants/acme", headers=admin())
        assert r.status_code == 429
        assert errors(r) == ["rate_limited"]
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["access-control-allow-origin"] == "*"
        assert (await stack.register("acme", "wallet", "noop", "tok")).status_code == 429
        spoofed = {"X-Forwarded-For": "203.0.113.9"}
        r = await stack.http.get("/tenants/acme", headers={**admin(), **spoofed})
        assert r.status_code == 429, "X-Forwarded-For from an untrusted peer is ignored"
        for i in range(10):
            assert (await stack.push("acme", "wallet", f"m{i}")).status_code == 202, "pushes never"
    async with open_stack(
        nats_url,
        database_url,
        unique_name + "p",
        tmp_path,
        rate_limit_per_minute=2,
        trusted_proxies=("127.0.0.1",),
    ) as stack:
        first = {"X-Forwarded-For": "203.0.113.1"}
        second = {"X-Forwarded-For": "198.51.100.7, 203.0.113.2"}
        for _ in range(2):
            assert (
                await stack.http.get("/tenants/nobody", headers={**admin(), **first})
            ).status_code == 404
        assert (
            await stack.http.get("/tenants/nobody", headers={**admin(), **first})
        ).status_code == 429
        r = await stack.http.get("/tenants/nobody", headers={**admin(), **second})
        assert r.status_code == 404, "another client behind the trusted proxy has its own bucket"


# --------------------------------------------------------------------------------------------
# sealed storage: rotation, rebuilds, and no secret anywhere
# --------------------------------------------------------------------------------------------


async def test_rebuilding_the_read_tables_keeps_the_credentials(stack: Stack) -> None:
    await stack.create("acme")
    assert (await stack.upload_p8("acme")).status_code == 200
    stored = await stack.stored_rows("acme")
    await rebuild(stack.log, stack.database_url, stack.settings.database_schema)
    assert await stack.stored_rows("acme") == stored
    assert (await stack.register("acme", "wallet", "apns", "e5" * 32)).status_code == 200
    assert (await stack.push("acme", "wallet", "m1")).status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))


async def test_keys_rotate_lazily_and_all_at_once(database_url: str, unique_name: str) -> None:
    old, new = generate_key(), generate_key()
    base = Settings(database_schema=unique_name, credentials_schema=f"{unique_name}_credentials")
    _, pem = p8()
    credentials = [
        ApnsTokenKey(topic=TOPIC, key_id="KEY1234567", team_id=TEAM_ID, pkcs8_pem=pem.decode()),
        ApnsTokenKey(
            topic=TOPIC + ".b", key_id="KEY1234567", team_id=TEAM_ID, pkcs8_pem=pem.decode()
        ),
    ]
    fingerprints = []
    async with open_credential_store(
        Settings(**{**_fields(base), "credentials_key": old}), database_url
    ) as store:
        assert store is not None
        for tenant, credential in zip(("a", "b"), credentials, strict=True):
            await store.save(tenant, credential)
            fingerprints.append(
                (tenant, (await _fingerprint_rows(store, database_url, base, tenant))[0])
            )
    old_id, new_id = Keyring.from_text(old).current_id, Keyring.from_text(new).current_id
    rotated = Settings(**{**_fields(base), "credentials_key": new, "credentials_old_keys": (old,)})
    async with open_credential_store(rotated, database_url) as store:
        assert store is not None
        # lazily: reading a credential sealed under the old key re-seals it
        tenant, fingerprint = fingerprints[0]
        assert await store.load(tenant, "apns", fingerprint) == credentials[0]
        assert await _key_ids(database_url, base) == {"a": new_id, "b": old_id}
    # all at once, then the old key can go
    report = await rotate_key(rotated, database_url)
    assert (report.resealed, report.already_current, report.unopenable) == (1, 1, ())
    assert await _key_ids(database_url, base) == {"a": new_id, "b": new_id}
    async with open_credential_store(
        Settings(**{**_fields(base), "credentials_key": new}), database_url
    ) as store:
        assert store is not None
        for (tenant, fingerprint), credential in zip(fingerprints, credentials, strict=True):
            assert await store.load(tenant, "apns", fingerprint) == credential
    # a key nobody configures any more is reported, never guessed
    async with open_credential_store(
        Settings(**{**_fields(base), "credentials_key": generate_key()}), database_url
    ) as store:
        assert store is not None
        report = await store.rotate()
        assert [(t, k) for t, k, _ in report.unopenable] == [("a", "apns"), ("b", "apns")]


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__struct_fields__}


async def _fingerprint_rows(
    store: PostgresCredentialStore, database_url: str, settings: Settings, tenant: str
) -> list[str]:
    query = sql.SQL("SELECT fingerprint FROM {} WHERE tenant_id = %s").format(
        sql.Identifier(settings.credentials_schema, "tenant_credentials")
    )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(query, (tenant,))
        return [str(row[0]) for row in await cur.fetchall()]


async def _key_ids(database_url: str, settings: Settings) -> dict[str, str]:
    query = sql.SQL("SELECT tenant_id, key_id FROM {}").format(
        sql.Identifier(settings.credentials_schema, "tenant_credentials")
    )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(query)
        return {str(t): str(k) for t, k in await cur.fetchall()}


def _forms(secret: bytes) -> set[bytes]:
    """A secret as it could leak: whole, base64, and each long line of a PEM body."""
    found = {secret, base64.b64encode(secret), secret.hex().encode()}
    for line in secret.splitlines():
        if len(line) >= 24 and not line.startswith(b"-----"):
            found.add(line)
    return found


async def _database_dump(database_url: str, schemas: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Every value of every table in ``schemas``, as bytes, with where it was found."""
    values: list[tuple[str, bytes]] = []
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema = ANY(%s) AND table_type = 'BASE TABLE'",
            (list(schemas),),
        )
        tables = await cur.fetchall()
        assert len(tables) >= 6
        for schema, table in tables:
            rows = await conn.execute(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table))
            )
            for row in await rows.fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        values.append((f"{schema}.{table}", bytes(value)))
                    elif value is not None:
                        values.append((f"{schema}.{table}", str(value).encode()))
    return values


async def test_no_secret_reaches_the_log_the_database_or_the_logs(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    key, pem = p8()
    key_id = stack.trust_key(key)
    certificate = self_signed_client("Apple Push Services", user_id=TOPIC)
    p12 = certificate.p12()
    account = stack.fcm.service_account_info("proj-s")
    tokens = {
        "apns": "f7" * 32,
        "apns-sandbox": "a8" * 32,
        "fcm": "fcm-device-token-" + secrets.token_hex(16),
    }
    with capture_logs() as logs:
        await stack.create("cert")
        r = await stack.http.post(
            "/tenants/cert/apns",
            data={"apns_topic": TOPIC, "apns_certificate_password": certificate.password},
            files={"apns_certificate": ("cert.p12", p12, "application/x-pkcs12")},
            headers=as_tenant("cert"),
        )
        assert r.status_code == 200, r.text
        bad = await stack.http.post(
            "/tenants/cert/apns",
            data={"apns_topic": TOPIC, "apns_certificate_password": certificate.password + "x"},
            files={"apns_certificate": ("cert.p12", p12, "application/x-pkcs12")},
            headers=as_tenant("cert"),
        )
        assert bad.status_code == 400
        await stack.create("s")
        assert (
            await stack.upload_p8("s", pem, key_id=key_id, headers=as_tenant("s"))
        ).status_code == 200
        r = await stack.http.post(
            "/tenants/s/fcm_v1",
            files={"credentials": ("sa.json", json.dumps(account).encode(), "application/json")},
            headers=as_tenant("s"),
        )
        assert r.status_code == 200, r.text
        for kind, token in tokens.items():
            assert (await stack.register("s", f"wallet-{kind}", kind, token)).status_code == 200
            assert (await stack.push("s", f"wallet-{kind}", f"m-{kind}")).status_code == 202
        await stack.wait_for(lambda ev: len(of(NotificationDelivered, ev)) == 3)
        assert (
            await stack.http.delete("/tenants/cert/apns", headers=as_tenant("cert"))
        ).status_code == 204
        await Projector(
            stack.log, stack.database_url, schema=stack.settings.database_schema
        ).catch_up()

    secrets_to_find: dict[str, set[bytes]] = {
        "p8 key": _forms(pem),
        "p12 file": _forms(p12),
        "p12 password": {certificate.password.encode()},
        "service-account key": _forms(account["private_key"].encode()),
        "credentials key": {stack.settings.credentials_key.encode()}
        if stack.settings.credentials_key
        else set(),
        "admin token": {ADMIN.encode()},
        "tenant JWT secret": {JWT_SECRET.encode()},
    }
    log_records = [
        (e.subject, e.data, repr(dict(e.headers)).encode()) async for e in stack.log.read()
    ]
    assert log_records
    database = await _database_dump(
        stack.database_url, (stack.settings.database_schema, stack.settings.credentials_schema)
    )
    assert any(where.endswith("tenant_credentials") for where, _ in database)
    captured = [repr(entry).encode() for entry in logs] + [
        r.getMessage().encode() for r in caplog.records
    ]
    # the search finds what is there: device tokens are in the devices table, deliveries logged
    devices = [value for where, value in database if where.endswith(".devices")]
    assert any(tokens["fcm"].encode() in value for value in devices)
    assert sum(b"delivery_attempt" in line for line in captured) == 3
    for name, forms in secrets_to_find.items():
        for form in forms:
            for subject, data, headers in log_records:
                assert form not in data, f"{name} in the event log at {subject}"
                assert form not in headers, f"{name} in event headers at {subject}"
            for where, value in database:
                assert form not in value, f"{name} in {where}"
            for line in captured:
                assert form not in line, f"{name} in the logs: {line[:200]!r}"
    for kind, token in tokens.items():
        for line in captured:
            assert token.encode() not in line, f"a whole {kind} device token in the logs"
