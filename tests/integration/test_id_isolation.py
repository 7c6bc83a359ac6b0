"""Ids that look like subject syntax are ordinary ids, over real JetStream.

Client and message ids may hold ``.``, ``*``, ``>``, ``=`` and any unicode (the contract's "Ids"
section). Each is its own client or message: registering, pushing, unregistering and delivering
one never touches another, whatever NATS would make of the id as a subject. The API runs
in-process on the caller's loop; a dispatcher delivers through the noop provider, which records
the token each notification went to.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from eventstore.jetstream import JetStreamEventLog
from relaypush.aggregates import load_client
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.noop import NoopProvider
from relaypush.domain.events import (
    ClientRegistered,
    ClientUnregistered,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDropped,
    NotificationDuplicate,
    decode_event,
)
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.runtime import enabled_providers
from relaypush.service import RelayService
from tests.asgi import asgi_client

pytestmark = pytest.mark.integration

#: Ids a subject-based log could confuse: prefixes of each other, wildcards, the escape
#: character and its escapes, dots, spaces and non-ASCII text.
LOOKALIKES = [
    "a",
    "a.b",
    "a.b.c",
    "a.*",
    "a.>",
    "*",
    ">",
    "a b",
    "wallet.1",
    "wallet=2E1",
    "wallet_1",
    "=",
    "=3D",
    "msg-\u00fc-\U0001f514",
    "\u00e9" * 127 + "x",
]


@dataclass
class Stack:
    client: httpx.AsyncClient
    log: JetStreamEventLog
    noop: NoopProvider


@pytest_asyncio.fixture(name="stack")
async def fx_stack(nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    settings = Settings(stream_name=unique_name.upper(), subject_prefix=unique_name)
    log = await JetStreamEventLog.connect(
        nats_url, stream=settings.stream_name, prefix=settings.subject_prefix
    )
    metrics = Registry()
    service = RelayService(log, enabled_providers=enabled_providers(settings), metrics=metrics)
    app = create_app(settings=settings, service=service, metrics=metrics)
    noop = NoopProvider()
    dispatcher = Dispatcher(
        log, {"noop": noop}, deadline=60.0, durable=f"d-{unique_name}", metrics=metrics
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(dispatcher.run(stop))
    try:
        async with asgi_client(app) as client:
            yield Stack(client, log, noop)
    finally:
        stop.set()
        await worker
        await log.close()


def path(client_id: str) -> str:
    return "/clients/" + quote(client_id, safe="")


def push_body(message_id: str) -> dict[str, object]:
    return {"id": message_id, "payload": {"topic": "ab", "flags": 1, "blob": "b3BhcXVl"}}


def token_of(client_id: str) -> str:
    return "token-" + client_id.encode().hex()[:40] + f"-{len(client_id)}"


async def all_events(log: JetStreamEventLog) -> list[object]:
    return [decode_event(record.data) async for record in log.read()]


async def wait_delivered(log: JetStreamEventLog, count: int) -> None:
    """Until the log holds ``count`` delivered events (polling the log, never a fixed sleep)."""
    for _ in range(600):
        delivered = [e for e in await all_events(log) if isinstance(e, NotificationDelivered)]
        if len(delivered) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} notifications delivered")


async def test_lookalike_client_ids_are_separate_clients(stack: Stack) -> None:
    for client_id in LOOKALIKES:
        body = {"client_id": client_id, "type": "noop", "token": token_of(client_id)}
        registered = await stack.client.post("/clients", json=body)
        assert registered.status_code == 200, registered.text
    # Unregister the wildcard-looking ones: nothing else may be unregistered with them.
    for client_id in ("a.*", "a.>", "*", ">"):
        assert (await stack.client.delete(path(client_id))).status_code == 200

    gone = {"a.*", "a.>", "*", ">"}
    for client_id in LOOKALIKES:
        state = await load_client(stack.log, DEFAULT_TENANT, client_id)
        assert state.registered is (client_id not in gone), client_id
        if state.registered:
            assert state.token == token_of(client_id)

    for client_id in LOOKALIKES:
        pushed = await stack.client.post(path(client_id), json=push_body(client_id))
        assert pushed.status_code == 202, pushed.text

    kept = [c for c in LOOKALIKES if c not in gone]
    await wait_delivered(stack.log, len(kept))
    delivered_to = {s.target.client_id: s for s in stack.noop.sent}
    assert sorted(delivered_to) == sorted(kept)
    for client_id, send in delivered_to.items():
        assert send.target.token == token_of(client_id)
        assert send.notification.client_id == client_id
        assert send.notification.message_id == client_id

    events = await all_events(stack.log)
    registrations = [e.client_id for e in events if isinstance(e, ClientRegistered)]
    unregistered = [e.client_id for e in events if isinstance(e, ClientUnregistered)]
    dropped = {e.client_id for e in events if isinstance(e, NotificationDropped)}
    assert registrations == LOOKALIKES
    assert unregistered == ["a.*", "a.>", "*", ">"]
    assert dropped == gone


async def test_lookalike_message_ids_are_separate_notifications(stack: Stack) -> None:
    body = {"client_id": "wallet.1", "type": "noop", "token": "tok"}
    assert (await stack.client.post("/clients", json=body)).status_code == 200
    # The same ids again for a lookalike client: still separate notifications.
    body = {"client_id": "wallet=2E1", "type": "noop", "token": "tok2"}
    assert (await stack.client.post("/clients", json=body)).status_code == 200

    for client_id in ("wallet.1", "wallet=2E1"):
        for message_id in LOOKALIKES:
            first = await stack.client.post(path(client_id), json=push_body(message_id))
            assert first.status_code == 202, (client_id, message_id, first.text)
        for message_id in LOOKALIKES:
            again = await stack.client.post(path(client_id), json=push_body(message_id))
            assert again.status_code == 200, (client_id, message_id, again.text)

    events = await all_events(stack.log)
    accepted = [(e.client_id, e.message_id) for e in events if isinstance(e, NotificationAccepted)]
    duplicates = [
        (e.client_id, e.message_id) for e in events if isinstance(e, NotificationDuplicate)
    ]
    expected = [(c, m) for c in ("wallet.1", "wallet=2E1") for m in LOOKALIKES]
    assert accepted == expected
    assert duplicates == expected

    await wait_delivered(stack.log, len(expected))
    sent = sorted((s.target.client_id, s.notification.message_id) for s in stack.noop.sent)
    assert sent == sorted(expected)
    assert {s.target.token for s in stack.noop.sent if s.target.client_id == "wallet.1"} == {"tok"}
