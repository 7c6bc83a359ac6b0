"""HTTP → JetStream → dispatcher → the Web Push stand-in, over real TLS, VAPID and aes128gcm.

The provider is built from settings as ``relaypush serve`` builds it: the stand-in is reached
through ``RELAYPUSH_WEBPUSH_HOSTS=127.0.0.1`` and ``RELAYPUSH_WEBPUSH_CA_FILE``, as a browser
vendor's push service would be. The stand-in decrypts every message with the subscription's own
keys, so these tests assert what a browser's service worker would read. Tests wait on events in
the log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eventstore.jetstream import JetStreamEventLog
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.vapid import VapidKey
from relaypush.domain.events import (
    AnyEvent,
    ClientUnregistered,
    NotificationDelivered,
    NotificationDeliveryFailed,
    TenantSuspended,
    decode_event,
)
from relaypush.http.app import create_app
from relaypush.metrics import REGISTRY, Registry
from relaypush.runtime import build_providers, enabled_providers
from relaypush.service import RelayService
from relaypush.testing.webpush import BrowserSubscription, WebPushStandIn
from tests.asgi import asgi_client

pytestmark = pytest.mark.integration

SUBJECT = "mailto:push-ops@example.com"
ENCRYPTED_BLOB = "ZW5jcnlwdGVkLWVudmVsb3BlLWJ5dGVzLy8rKz09"
DEADLINE = 60.0

E = TypeVar("E")


def of(kind: type[E], events: list[AnyEvent]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def notify_blob(**fields: str) -> str:
    return base64.b64encode(json.dumps(fields).encode()).decode()


@dataclass
class Stack:
    http: httpx.AsyncClient
    log: JetStreamEventLog
    push: WebPushStandIn
    vapid_public_key: str
    metrics: Registry

    async def events(self) -> list[AnyEvent]:
        return [decode_event(e.data) async for e in self.log.read()]

    async def wait_for(self, what: Callable[[list[AnyEvent]], bool], within: float = 30) -> None:
        """Poll the log until ``what`` holds for its events."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if what(await self.events()):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"log never satisfied the condition: {await self.events()}")

    def subscribe(self) -> BrowserSubscription:
        """A browser subscribed with this server's VAPID public key."""
        return self.push.subscribe(application_server_key=self.vapid_public_key)

    async def register(self, client_id: str, token: str, **extra: Any) -> httpx.Response:
        return await self.http.post(
            "/clients", json={"client_id": client_id, "type": "webpush", "token": token, **extra}
        )

    async def push_to(self, client_id: str, message_id: str, payload: object) -> httpx.Response:
        return await self.http.post(
            f"/clients/{client_id}", json={"id": message_id, "payload": payload}
        )


def vapid_file(tmp: Path) -> tuple[Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp / "vapid.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # openssl ecparam's "EC PRIVATE KEY"
            serialization.NoEncryption(),
        )
    )
    return path, VapidKey(key, SUBJECT).public_key


@contextlib.asynccontextmanager
async def open_stack(
    nats_url: str,
    name: str,
    tmp: Path,
    *,
    api_hosts: tuple[str, ...] = ("127.0.0.1",),
    dispatcher_hosts: tuple[str, ...] = ("127.0.0.1",),
) -> AsyncIterator[Stack]:
    """The API registers with ``api_hosts`` allowed, the dispatcher fetches ``dispatcher_hosts``
    (the same, unless a test changes the settings between registration and delivery)."""
    key_file, public_key = vapid_file(tmp)
    async with WebPushStandIn() as push:
        common: dict[str, Any] = {
            "stream_name": name.upper(),
            "subject_prefix": name,
            "vapid_private_key_file": key_file,
            "vapid_subject": SUBJECT,
            "webpush_ca_file": push.ca_file,
            "send_timeout": 5.0,
            "delivery_deadline": DEADLINE,
        }
        api_settings = Settings(**common, webpush_hosts=api_hosts)
        dispatcher_settings = Settings(**common, webpush_hosts=dispatcher_hosts)
        log = await JetStreamEventLog.connect(nats_url, stream=name.upper(), prefix=name)
        metrics = Registry()
        providers = build_providers(dispatcher_settings)
        dispatcher = Dispatcher(
            log,
            providers,
            deadline=DEADLINE,
            durable=f"d-{name}",
            send_timeout=5.0,
            retry_base=0.05,
            metrics=metrics,
        )
        service = RelayService(
            log, enabled_providers=enabled_providers(api_settings), metrics=metrics
        )
        app = create_app(settings=api_settings, service=service, metrics=metrics)
        stop = asyncio.Event()
        worker = asyncio.create_task(dispatcher.run(stop))
        try:
            async with asgi_client(app) as http:
                yield Stack(http, log, push, public_key, metrics)
        finally:
            stop.set()
            await worker
            for provider in providers.values():
                await provider.close()
            await log.close()


@pytest_asyncio.fixture(name="stack")
async def fx_stack(nats_url: str, unique_name: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(nats_url, unique_name, tmp_path) as stack:
        yield stack


async def test_the_browser_decrypts_exactly_what_the_contract_says(stack: Stack) -> None:
    browser = stack.subscribe()
    assert (await stack.register("web", browser.token())).status_code == 200
    encrypted = {"topic": "t0", "flags": 17, "blob": ENCRYPTED_BLOB}
    clear = notify_blob(title="Hi", body="Hello", icon="https://x.example/i.png", url="https://x")
    assert (await stack.push_to("web", "enc", encrypted)).status_code == 202
    assert (await stack.push_to("web", "clear", f"t1:16:{clear}")).status_code == 202
    await stack.wait_for(lambda ev: len(of(NotificationDelivered, ev)) == 2)

    received = {r.json["topic"]: r for r in stack.push.sent_to(browser)}
    assert received["t0"].json == {"topic": "t0", "flags": "17", "blob": ENCRYPTED_BLOB}
    assert received["t1"].json == {
        "topic": "t1",
        "flags": "16",
        "blob": clear,
        "title": "Hi",
        "body": "Hello",
        "icon": "https://x.example/i.png",
        "url": "https://x",
    }
    now = time.time()
    for record in received.values():
        assert record.status == 201
        assert record.http_version == "HTTP/2"
        assert record.headers["content-encoding"] == "aes128gcm"
        assert record.headers["urgency"] == "high"
        assert 0 < int(record.headers["ttl"]) <= DEADLINE
        assert "topic" not in record.headers  # relay pushes carry no collapse id
        assert record.vapid_key == stack.vapid_public_key
        assert record.claims is not None
        assert record.claims["aud"] == stack.push.url
        assert record.claims["sub"] == SUBJECT
        assert now < record.claims["exp"] <= now + 24 * 3600
    delivered = of(NotificationDelivered, await stack.events())
    assert {d.provider for d in delivered} == {"webpush"}
    assert all(d.provider_id and d.provider_id.startswith("sha256:") for d in delivered)


async def test_a_raw_client_receives_the_raw_message(stack: Stack) -> None:
    browser = stack.subscribe()
    assert (await stack.register("raw", browser.token(), always_raw=True)).status_code == 200
    r = await stack.http.post("/clients/raw", json={"topic": "t2", "tag": 4100, "message": "m"})
    assert r.status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    (record,) = stack.push.sent_to(browser)
    assert record.json == {"topic": "t2", "tag": "4100", "message": "m"}


@pytest.mark.parametrize("status", [404, 410])
async def test_a_dead_subscription_unregisters_the_client(stack: Stack, status: int) -> None:
    browser = stack.subscribe()
    stack.push.script(browser).error(status)
    await stack.register("gone", browser.token())
    assert (
        await stack.push_to("gone", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).is_success
    await stack.wait_for(lambda ev: bool(of(ClientUnregistered, ev)))
    events = await stack.events()
    (unregistered,) = of(ClientUnregistered, events)
    assert unregistered.reason == "token_invalid"
    (failed,) = of(NotificationDeliveryFailed, events)
    assert failed.permanent
    assert failed.reason.startswith(f"token_invalid: {status}")
    r = await stack.push_to("gone", "m2", {"topic": "t", "flags": 1, "blob": "YQ=="})
    assert r.status_code == 202
    assert type((await stack.events())[-1]).__name__ == "NotificationDropped"
    assert len(stack.push.sent_to(browser)) == 1, "nothing is sent to a dead subscription again"


async def test_5xx_and_429_are_retried_honouring_retry_after(stack: Stack) -> None:
    browser = stack.subscribe()
    stack.push.script(browser).fail(2, 503).error(429, retry_after=1, times=1)
    await stack.register("flaky", browser.token())
    assert (
        await stack.push_to("flaky", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).is_success
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    events = await stack.events()
    failures = of(NotificationDeliveryFailed, events)
    assert [(f.attempt, f.permanent) for f in failures] == [(1, False), (2, False), (3, False)]
    assert failures[2].reason.startswith("429")
    assert failures[2].next_attempt_at is not None
    assert failures[2].next_attempt_at - failures[2].occurred_at >= timedelta(seconds=1)
    (delivered,) = of(NotificationDelivered, events)
    assert delivered.attempt == 4
    assert delivered.occurred_at - failures[2].occurred_at >= timedelta(seconds=0.9)
    assert [r.status for r in stack.push.sent_to(browser)] == [503, 503, 429, 201]
    assert all(r.message is not None for r in stack.push.sent_to(browser))


@pytest.mark.parametrize("status", [400, 401, 403, 413])
async def test_refusals_fail_the_message_for_good_and_never_suspend_the_tenant(
    stack: Stack, status: int
) -> None:
    counted = REGISTRY.counter("relaypush_webpush_refused_total", "", ("tenant_id", "status"))
    before = counted.value(tenant_id=DEFAULT_TENANT, status=str(status))
    browser = stack.subscribe()
    stack.push.script(browser).error(status)
    await stack.register("refused", browser.token())
    assert (
        await stack.push_to("refused", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).is_success
    await stack.wait_for(lambda ev: bool(of(NotificationDeliveryFailed, ev)))
    other = stack.subscribe()
    await stack.register("fine", other.token())
    assert (
        await stack.push_to("fine", "m2", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).is_success
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    events = await stack.events()
    (failed,) = of(NotificationDeliveryFailed, events)
    assert failed.permanent
    assert failed.reason.startswith(str(status))
    assert not of(TenantSuspended, events)
    assert not of(ClientUnregistered, events)
    after = counted.value(tenant_id=DEFAULT_TENANT, status=str(status))
    assert after - before == (1 if status != 413 else 0)


async def test_a_subscription_made_with_another_key_is_refused_by_the_push_service(
    stack: Stack,
) -> None:
    other_key = VapidKey(ec.generate_private_key(ec.SECP256R1()), SUBJECT).public_key
    browser = stack.push.subscribe(application_server_key=other_key)
    await stack.register("other-app", browser.token())
    assert (
        await stack.push_to("other-app", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).is_success
    await stack.wait_for(lambda ev: bool(of(NotificationDeliveryFailed, ev)))
    events = await stack.events()
    (failed,) = of(NotificationDeliveryFailed, events)
    assert failed.permanent
    assert failed.reason.startswith("403 Forbidden: the VAPID key is not the one")
    assert not of(TenantSuspended, events)
    (record,) = stack.push.sent_to(browser)
    assert record.status == 403
    assert record.message is None


async def test_a_payload_over_the_record_limit_is_400_and_never_sent(stack: Stack) -> None:
    browser = stack.subscribe()
    await stack.register("web", browser.token())
    fits = 4096 - 103 - len('{"topic":"t","flags":"1","blob":""}')
    r = await stack.push_to("web", "big", {"topic": "t", "flags": 1, "blob": "A" * (fits + 1)})
    assert r.status_code == 400
    assert r.json()["errors"][0]["name"] == "payload_too_large"
    r = await stack.push_to("web", "fits", {"topic": "t", "flags": 1, "blob": "A" * fits})
    assert r.status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    (record,) = stack.push.sent_to(browser)
    assert len(record.body) == 4096
    assert record.json["blob"] == "A" * fits


async def test_an_endpoint_outside_the_allowed_hosts_is_refused_and_never_fetched(
    stack: Stack,
) -> None:
    browser = stack.subscribe()
    elsewhere = browser.to_json()
    elsewhere["endpoint"] = elsewhere["endpoint"].replace("127.0.0.1", "localhost")
    r = await stack.register("elsewhere", json.dumps(elsewhere))
    assert r.status_code == 400
    (field,) = r.json()["fields"]
    assert field["field"] == "token"
    assert "'localhost' is not an allowed push service (127.0.0.1)" in field["description"]
    r = await stack.push_to("elsewhere", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    assert r.status_code == 202
    assert type((await stack.events())[-1]).__name__ == "NotificationDropped"
    assert stack.push.records == []


async def test_a_stored_subscription_whose_host_left_the_list_is_never_fetched(
    nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    async with open_stack(
        nats_url,
        unique_name,
        tmp_path,
        api_hosts=("127.0.0.1", "localhost"),
        dispatcher_hosts=("127.0.0.1",),
    ) as stack:
        browser = stack.subscribe()
        moved = browser.to_json()
        moved["endpoint"] = moved["endpoint"].replace("127.0.0.1", "localhost")
        assert (await stack.register("moved", json.dumps(moved))).status_code == 200
        r = await stack.push_to("moved", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
        assert r.status_code == 202
        await stack.wait_for(lambda ev: bool(of(NotificationDeliveryFailed, ev)))
        (failed,) = of(NotificationDeliveryFailed, await stack.events())
        assert failed.permanent
        assert failed.reason.startswith("endpoint_not_allowed: 'localhost'")
        assert stack.push.records == []


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("not json", "PushSubscription as JSON"),
        ('{"endpoint":"http://127.0.0.1/push/x","keys":{}}', "https URL"),
        ("{}", "endpoint is required"),
        ("x" * 2049, "at most 2048 bytes"),
    ],
)
async def test_a_malformed_subscription_is_400_naming_token(
    stack: Stack, token: str, says: str
) -> None:
    r = await stack.register("bad", token)
    assert r.status_code == 400
    (field,) = r.json()["fields"]
    assert field["field"] == "token"
    assert says in field["description"]
