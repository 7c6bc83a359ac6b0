"""HTTP push → JetStream → dispatcher → APNs and FCM stand-ins, over real TLS and HTTP/2.

The providers are built from settings exactly as ``relaypush serve`` builds them: the stand-ins
are reached through ``RELAYPUSH_APNS_URL``, ``RELAYPUSH_APNS_SANDBOX_URL``, ``RELAYPUSH_FCM_URL``
and the CA-file settings, as Apple and Google would be. Tests wait on events in the log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eventstore.jetstream import JetStreamEventLog
from relaypush.config import Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.domain.events import (
    AnyEvent,
    ClientUnregistered,
    NotificationDelivered,
    NotificationDeliveryFailed,
    decode_event,
)
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.runtime import build_providers, enabled_providers
from relaypush.service import RelayService
from relaypush.testing.apns import ApnsStandIn, reason
from relaypush.testing.fcm import FcmStandIn
from tests.asgi import asgi_client

pytestmark = pytest.mark.integration

TOPIC = "com.example.wallet"
KEY_ID = "KEY1234567"
TEAM_ID = "TEAM123456"
ENCRYPTED_BLOB = "ZW5jcnlwdGVkLWVudmVsb3BlLWJ5dGVzLy8rKz09"
BANNER = "You have new notifications. Open to view"


@dataclass
class Stack:
    http: httpx.AsyncClient
    log: JetStreamEventLog
    apns: ApnsStandIn
    sandbox: ApnsStandIn
    fcm: FcmStandIn

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

    async def register(self, client_id: str, kind: str, token: str) -> None:
        r = await self.http.post(
            "/clients", json={"client_id": client_id, "type": kind, "token": token}
        )
        assert r.status_code == 200, r.text

    async def push(self, client_id: str, message_id: str, payload: object) -> httpx.Response:
        return await self.http.post(
            f"/clients/{client_id}", json={"id": message_id, "payload": payload}
        )


E = TypeVar("E")


def of(kind: type[E], events: list[AnyEvent]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def cleartext(title: str, body: str) -> str:
    return base64.b64encode(json.dumps({"title": title, "body": body}).encode()).decode()


@contextlib.asynccontextmanager
async def open_stack(
    nats_url: str,
    name: str,
    tmp: Path,
    *,
    deadline: float = 60.0,
    clock_skew: timedelta = timedelta(0),
) -> AsyncIterator[Stack]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp / "AuthKey.p8"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    async with ApnsStandIn() as apns, ApnsStandIn() as sandbox, FcmStandIn() as fcm:
        for stand_in in (apns, sandbox):
            stand_in.add_key(KEY_ID, TEAM_ID, key)
        ca_bundle = tmp / "apns-ca.pem"
        ca_bundle.write_bytes(apns.ca_file.read_bytes() + sandbox.ca_file.read_bytes())
        credentials = tmp / "service-account.json"
        credentials.write_text(json.dumps(fcm.service_account_info()))
        settings = Settings(
            stream_name=name.upper(),
            subject_prefix=name,
            apns_topic=TOPIC,
            apns_key_file=key_file,
            apns_key_id=KEY_ID,
            apns_team_id=TEAM_ID,
            apns_url=apns.url,
            apns_sandbox_url=sandbox.url,
            apns_ca_file=ca_bundle,
            fcm_credentials_file=credentials,
            fcm_url=fcm.url,
            fcm_ca_file=fcm.ca_file,
            send_timeout=5.0,
        )
        log = await JetStreamEventLog.connect(nats_url, stream=name.upper(), prefix=name)
        metrics = Registry()
        providers = build_providers(settings)
        dispatcher = Dispatcher(
            log,
            providers,
            deadline=deadline,
            durable=f"d-{name}",
            send_timeout=settings.send_timeout,
            retry_base=0.05,
            clock=lambda: datetime.now(UTC) + clock_skew,
            metrics=metrics,
        )
        service = RelayService(log, enabled_providers=enabled_providers(settings), metrics=metrics)
        app = create_app(settings=settings, service=service, metrics=metrics)
        stop = asyncio.Event()
        worker = asyncio.create_task(dispatcher.run(stop))
        try:
            async with asgi_client(app) as http:
                yield Stack(http, log, apns, sandbox, fcm)
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


async def test_each_provider_receives_the_contract_payload(stack: Stack) -> None:
    await stack.register("ios", "apns", "a1" * 32)
    await stack.register("ios-dev", "apns-sandbox", "b2" * 32)
    await stack.register("android", "fcm", "fcm-token-1")
    for client in ("ios", "ios-dev", "android"):
        assert (
            await stack.push(
                client, f"{client}-enc", {"topic": "t0", "flags": 17, "blob": ENCRYPTED_BLOB}
            )
        ).status_code == 202
        assert (
            await stack.push(client, f"{client}-clear", f"t1:16:{cleartext('Hi', 'Hello')}")
        ).status_code == 202
    await stack.wait_for(lambda ev: len(of(NotificationDelivered, ev)) == 6)

    for stand_in, token in ((stack.apns, "a1" * 32), (stack.sandbox, "b2" * 32)):
        assert [r.token for r in stand_in.requests] == [token, token]
        encrypted, clear = stand_in.requests
        assert encrypted.body == (
            b'{"aps":{"alert":{"title":"' + BANNER.encode() + b'"},"content-available":1,'
            b'"mutable-content":1},"topic":"t0","blob":"'
            + ENCRYPTED_BLOB.encode()
            + b'","flags":17}'
        )
        assert json.loads(clear.body) == {
            "aps": {
                "alert": {"title": "Hi", "body": "Hello"},
                "content-available": 1,
                "mutable-content": 1,
            },
            "topic": "t1",
        }
        for request in stand_in.requests:
            assert request.headers["apns-topic"] == TOPIC
            assert request.headers["apns-push-type"] == "alert"
            assert request.headers["apns-priority"] == "10"
            assert request.jwt is not None
    assert stack.apns.requests[0].headers["apns-id"] != stack.sandbox.requests[0].headers["apns-id"]

    sent = {r.json["message"]["data"]["topic"]: r.json["message"] for r in stack.fcm.requests}
    assert sent["t0"] == {
        "token": "fcm-token-1",
        "data": {"topic": "t0", "flags": "17", "blob": ENCRYPTED_BLOB},
        "android": {"priority": "HIGH"},
        "apns": {"payload": {"aps": {"content-available": 1}}},
    }
    assert sent["t1"]["notification"] == {"title": "Hi", "body": "Hello"}
    assert all(isinstance(v, str) for m in sent.values() for v in m["data"].values())
    delivered = of(NotificationDelivered, await stack.events())
    assert all(d.provider_id for d in delivered)


async def test_a_dead_token_unregisters_the_client(stack: Stack) -> None:
    token = "c3" * 32
    stack.apns.script(token, reason(410, "Unregistered"))
    await stack.register("dead", "apns", token)
    assert (
        await stack.push("dead", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).status_code == 202
    await stack.wait_for(lambda ev: bool(of(ClientUnregistered, ev)))
    events = await stack.events()
    (unregistered,) = of(ClientUnregistered, events)
    assert unregistered.reason == "token_invalid"
    (failed,) = of(NotificationDeliveryFailed, events)
    assert failed.permanent
    assert failed.reason.startswith("token_invalid")

    r = await stack.push("dead", "m2", {"topic": "t", "flags": 1, "blob": "YQ=="})
    assert r.status_code == 202
    tags = [type(e).__name__ for e in await stack.events()]
    assert tags[-1] == "NotificationDropped"
    assert len(stack.apns.requests) == 1, "nothing is sent to a dead token again"


async def test_two_503s_then_200_delivers_exactly_once(stack: Stack) -> None:
    stack.fcm.device("flaky").fail(2, 503)
    await stack.register("android", "fcm", "flaky")
    assert (
        await stack.push("android", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    events = await stack.events()
    failures = of(NotificationDeliveryFailed, events)
    assert [(f.attempt, f.permanent) for f in failures] == [(1, False), (2, False)]
    (delivered,) = of(NotificationDelivered, events)
    assert delivered.attempt == 3
    assert [r.status for r in stack.fcm.sent_to("flaky")] == [503, 503, 200]


async def test_retry_after_is_honoured(stack: Stack) -> None:
    token = "d4" * 32
    stack.apns.script(token, reason(429, "TooManyRequests", retry_after=1))
    await stack.register("busy", "apns", token)
    assert (
        await stack.push("busy", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    events = await stack.events()
    (failed,) = of(NotificationDeliveryFailed, events)
    (delivered,) = of(NotificationDelivered, events)
    assert failed.next_attempt_at is not None
    assert failed.next_attempt_at - failed.occurred_at >= timedelta(seconds=1)
    assert delivered.occurred_at - failed.occurred_at >= timedelta(seconds=0.9)


async def test_a_notification_past_its_deadline_is_not_sent(
    nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    skew = timedelta(seconds=120)  # the dispatcher's clock is past the 60 s deadline
    async with open_stack(nats_url, unique_name, tmp_path, clock_skew=skew) as stack:
        await stack.register("late", "fcm", "late-token")
        assert (
            await stack.push("late", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
        ).status_code == 202
        await stack.wait_for(lambda ev: bool(of(NotificationDeliveryFailed, ev)))
        (failed,) = of(NotificationDeliveryFailed, await stack.events())
        assert failed.permanent
        assert failed.reason == "expired"
        assert stack.fcm.requests == []


async def test_a_payload_over_the_limit_never_reaches_a_provider(stack: Stack) -> None:
    await stack.register("ios", "apns", "e5" * 32)
    await stack.register("android", "fcm", "big")
    for client in ("ios", "android"):
        r = await stack.push(client, "huge", {"topic": "t", "flags": 1, "blob": "A" * 4200})
        assert r.status_code == 400
        assert r.json()["errors"][0]["name"] == "payload_too_large"
    await stack.register("ios2", "apns", "f6" * 32)
    assert (
        await stack.push("ios2", "ok", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    assert [r.token for r in stack.apns.requests] == ["f6" * 32]
    assert stack.fcm.requests == []


async def test_bad_credentials_suspend_the_tenant(stack: Stack) -> None:
    token = "a7" * 32
    stack.apns.script(token, reason(403, "InvalidProviderToken"))
    await stack.register("ios", "apns", token)
    assert (
        await stack.push("ios", "m1", {"topic": "t", "flags": 1, "blob": "YQ=="})
    ).status_code == 202
    await stack.wait_for(lambda ev: any(type(e).__name__ == "TenantSuspended" for e in ev))

    deadline = time.monotonic() + 10
    for attempt in range(1000):  # the API reads a tenant's suspension at most a second late
        r = await stack.push("ios", f"after-{attempt}", {"topic": "t", "flags": 1, "blob": "YQ=="})
        assert r.status_code == 202
        if r.json()["status"] == "FAILED":
            break
        assert time.monotonic() < deadline, "pushes for a suspended tenant must say so"
        await asyncio.sleep(0.2)
    assert r.json()["errors"][0]["name"] == "tenant_suspended"
    assert len(stack.apns.requests) == 1


async def test_no_client_can_darken_its_tenant(stack: Stack) -> None:
    """A token of another Firebase project and a client whose chosen APNs environment the
    credentials do not serve touch their own client only: the tenant is not suspended and its
    other clients keep receiving."""
    stack.fcm.device("foreign").error(403, "SENDER_ID_MISMATCH", message="SenderId mismatch")
    wrong_environment = "b8" * 32
    stack.sandbox.script(wrong_environment, reason(400, "BadCertificateEnvironment"))
    await stack.register("foreign", "fcm", "foreign")
    await stack.register("wrong-env", "apns-sandbox", wrong_environment)
    await stack.register("fine-ios", "apns", "c9" * 32)
    await stack.register("fine-android", "fcm", "fine")
    payload = {"topic": "t", "flags": 1, "blob": "YQ=="}
    for client in ("foreign", "wrong-env"):
        assert (await stack.push(client, "m1", payload)).status_code == 202
    await stack.wait_for(lambda ev: len(of(NotificationDeliveryFailed, ev)) == 2)
    for client in ("fine-ios", "fine-android"):
        r = await stack.push(client, "after", payload)
        assert (r.status_code, r.json()) == (202, {"status": "OK"})
    await stack.wait_for(lambda ev: len(of(NotificationDelivered, ev)) == 2)
    events = await stack.events()
    assert not any(type(e).__name__ == "TenantSuspended" for e in events)
    failures = {f.client_id: f for f in of(NotificationDeliveryFailed, events)}
    assert failures["foreign"].permanent
    assert failures["foreign"].reason.startswith("token_foreign: SENDER_ID_MISMATCH")
    assert failures["wrong-env"].permanent
    assert "BadCertificateEnvironment" in failures["wrong-env"].reason
    (unregistered,) = of(ClientUnregistered, events)
    assert (unregistered.client_id, unregistered.reason) == ("foreign", "token_foreign")
    assert {d.client_id for d in of(NotificationDelivered, events)} == {"fine-ios", "fine-android"}
