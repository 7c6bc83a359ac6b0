"""Register → push → delivered → projected, over real JetStream and PostgreSQL.

The API runs in-process (litestar's test client), the dispatcher delivers through the noop
provider and the projector writes the read tables; the test waits on the projection's
checkpoint, never on the clock.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from eventstore.jetstream import JetStreamEventLog
from projections.runner import Projector, wait_for_position
from projections.schema import migrate
from relaypush.config import Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.noop import NoopProvider
from relaypush.domain.events import decode_event
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.runtime import enabled_providers
from relaypush.service import RelayService
from tests.asgi import asgi_client

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    client: httpx.AsyncClient
    log: JetStreamEventLog
    database_url: str
    schema: str
    noop: NoopProvider


@pytest_asyncio.fixture(name="stack")
async def fx_stack(nats_url: str, database_url: str, unique_name: str) -> AsyncIterator[Stack]:
    settings = Settings(stream_name=unique_name.upper(), subject_prefix=unique_name)
    log = await JetStreamEventLog.connect(
        nats_url, stream=settings.stream_name, prefix=settings.subject_prefix
    )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await migrate(conn, unique_name)
    metrics = Registry()
    service = RelayService(log, enabled_providers=enabled_providers(settings), metrics=metrics)
    app = create_app(settings=settings, service=service, metrics=metrics)
    noop = NoopProvider()
    dispatcher = Dispatcher(
        log, {"noop": noop}, deadline=60.0, durable=f"d-{unique_name}", metrics=metrics
    )
    projector = Projector(log, database_url, schema=unique_name)
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(dispatcher.run(stop)),
        asyncio.create_task(projector.run(stop)),
    ]
    try:
        async with asgi_client(app) as client:
            yield Stack(client, log, database_url, unique_name, noop)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await log.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(unique_name))
            )


def notify_blob(title: str, body: str) -> str:
    return base64.b64encode(json.dumps({"title": title, "body": body}).encode()).decode()


async def wait_delivered(stack: Stack, count: int) -> None:
    """Wait until the log holds ``count`` delivered events and the projector has passed them."""
    for _ in range(400):
        delivered = [
            e
            async for e in stack.log.read()
            if decode_event(e.data).__struct_config__.tag == "notification.delivered"
        ]
        if len(delivered) >= count:
            await wait_for_position(
                stack.database_url, stack.schema, max(e.position for e in delivered), timeout=20
            )
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} notifications delivered")


async def fetch(stack: Stack, query: str, *params: object) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(stack.schema)))
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def test_register_push_deliver_project(stack: Stack) -> None:
    r = await stack.client.post(
        "/clients", json={"client_id": "wallet-1", "type": "noop", "token": "tok-1"}
    )
    assert r.status_code == 200, r.text
    blob = notify_blob("Hi", "Hello there")
    r = await stack.client.post(
        "/clients/wallet-1",
        json={"id": "m-1", "payload": {"topic": "ab", "flags": 16, "blob": blob}},
    )
    assert r.status_code == 202, r.text
    encrypted = "c2VjcmV0LWJ5dGVzLW5ldmVyLWRlY29kZWQ="
    r = await stack.client.post(
        "/clients/wallet-1", json={"id": "m-2", "payload": f"cd:1:{encrypted}"}
    )
    assert r.status_code == 202, r.text

    await wait_delivered(stack, 2)

    sent = {s.notification.message_id: s for s in stack.noop.sent}
    assert set(sent) == {"m-1", "m-2"}
    assert sent["m-2"].notification.blob == encrypted
    assert sent["m-1"].target.token == "tok-1"
    devices = await fetch(stack, "SELECT client_id, provider, token, active FROM devices")
    assert devices == [("wallet-1", "noop", "tok-1", True)]
    messages = await fetch(
        stack, "SELECT message_id, status, encrypted, attempts FROM messages ORDER BY message_id"
    )
    assert messages == [("m-1", "delivered", False, 1), ("m-2", "delivered", True, 1)]
    inbox = await fetch(
        stack, "SELECT message_id, title, body, blob FROM inbox ORDER BY message_id"
    )
    assert inbox == [("m-1", "Hi", "Hello there", None), ("m-2", None, None, encrypted)]


async def test_fifty_concurrent_copies_are_accepted_once(stack: Stack) -> None:
    r = await stack.client.post(
        "/clients", json={"client_id": "wallet-2", "type": "noop", "token": "tok-2"}
    )
    assert r.status_code == 200
    body = {"id": "same-id", "payload": {"topic": "ab", "flags": 1, "blob": "b3BhcXVl"}}
    responses = await asyncio.gather(
        *(stack.client.post("/clients/wallet-2", json=body) for _ in range(50))
    )
    assert sorted(r.status_code for r in responses) == [200] * 49 + [202]
    tags = [decode_event(e.data).__struct_config__.tag async for e in stack.log.read()]
    assert tags.count("notification.accepted") == 1
    assert tags.count("notification.duplicate") == 49
    await wait_delivered(stack, 1)
    assert [s.notification.message_id for s in stack.noop.sent] == ["same-id"]
    rows = await fetch(
        stack, "SELECT status, duplicates FROM messages WHERE message_id = 'same-id'"
    )
    assert rows == [("delivered", 49)]


async def test_push_to_unregistered_client_is_dropped_and_recorded(stack: Stack) -> None:
    await stack.client.post("/clients", json={"client_id": "gone", "type": "noop", "token": "t"})
    r = await stack.client.delete("/clients/gone")
    assert r.status_code == 200
    r = await stack.client.post(
        "/clients/gone",
        json={"id": "x", "payload": {"topic": "ab", "flags": 1, "blob": "YmxvYg=="}},
    )
    assert r.status_code == 202
    tags = [decode_event(e.data).__struct_config__.tag async for e in stack.log.read()]
    assert tags == ["client.registered", "client.unregistered", "notification.dropped"]
    assert stack.noop.sent == []
