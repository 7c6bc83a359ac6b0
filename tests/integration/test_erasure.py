"""Erasure over real JetStream and PostgreSQL: a client's token and content become unreadable
everywhere, while the chain verifies, the history still lists its events and a rebuild equals the
live tables.

The API runs in-process; the dispatcher and the projector have sealers of their own, as separate
processes would (their caches do not share anything with the API's), and so does the
``relaypush audit erase`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import nats
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from eventstore import JetStreamEventLog
from projections import Projector, compare_schemas, rebuild_into, wait_for_position
from projections.schema import migrate
from relaypush.audit import Chainer, SigningKey, verify
from relaypush.audit.cli import add_audit_parser, run_audit
from relaypush.config import Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.noop import NoopProvider
from relaypush.domain.events import decode_event
from relaypush.http.app import create_app
from relaypush.metrics import Registry
from relaypush.privacy import open_sealer
from relaypush.runtime import enabled_providers
from relaypush.sealing import generate_key
from relaypush.service import RelayService
from tests.asgi import asgi_client

pytestmark = pytest.mark.integration

KEY = SigningKey.from_hex("55" * 32)
ADMIN = {"Authorization": "Bearer t0ken"}

# what the erased clients gave us, and what must not be readable anywhere afterwards
TOKEN_1 = "apns-device-token-of-wallet-one-4f1e"
TOKEN_2 = "fcm-device-token-of-wallet-two-9c2d"
TITLE = "Payment of 1,250 USDC received"
BODY = "From alice.eth for the flat in Lisbon"
RAW_MESSAGE = "raw-envelope-for-wallet-two-8b7e"
# a client that is not erased keeps its data in the tables (sealed in the log all the same)
TOKEN_3 = "device-token-of-wallet-three-kept"
TITLE_3 = "A title that stays readable"
SECRETS = (TOKEN_1, TOKEN_2, TITLE, BODY, RAW_MESSAGE)


def notify_blob(title: str, body: str) -> str:
    return base64.b64encode(json.dumps({"title": title, "body": body}).encode()).decode()


BLOB = notify_blob(TITLE, BODY)


@dataclass
class Stack:
    http: httpx.AsyncClient
    log: JetStreamEventLog
    settings: Settings
    url: str
    schema: str
    noop: NoopProvider


@pytest_asyncio.fixture(name="stack")
async def fx_stack(nats_url: str, database_url: str, unique_name: str) -> AsyncIterator[Stack]:
    settings = Settings(
        stream_name=unique_name.upper(),
        subject_prefix=unique_name,
        admin_token="t0ken",
        credentials_key=generate_key(),  # client keys are wrapped under it in the bucket
    )
    log = await JetStreamEventLog.connect(
        nats_url, stream=settings.stream_name, prefix=settings.subject_prefix
    )
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await migrate(conn, unique_name)
    metrics = Registry()
    service = RelayService(
        log,
        enabled_providers=enabled_providers(settings),
        metrics=metrics,
        sealer=await open_sealer(log, settings),
    )
    app = create_app(settings=settings, service=service, metrics=metrics, event_log=log)
    noop = NoopProvider()
    dispatcher = Dispatcher(
        log,
        {"noop": noop},
        deadline=60.0,
        durable=f"d-{unique_name}",
        metrics=metrics,
        sealer=await open_sealer(log, settings),
    )
    projector = Projector(
        log, database_url, schema=unique_name, opener=await open_sealer(log, settings)
    )
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(dispatcher.run(stop)),
        asyncio.create_task(projector.run(stop)),
    ]
    try:
        async with asgi_client(app) as http:
            yield Stack(http, log, settings, database_url, unique_name, noop)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await log.close()
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.delete_stream(settings.stream_name)
            await js.delete_key_value(f"{settings.stream_name}_KEYS")
        finally:
            await nc.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (unique_name + "%",)
            )
            for (name,) in await cur.fetchall():
                await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


async def register(stack: Stack, client: str, token: str, *, always_raw: bool = False) -> None:
    r = await stack.http.post(
        "/clients",
        json={"client_id": client, "type": "noop", "token": token, "always_raw": always_raw},
    )
    assert r.status_code == 200, r.text


async def push(stack: Stack, client: str, body: Mapping[str, object]) -> httpx.Response:
    return await stack.http.post(f"/clients/{client}", json=body)


async def tags(stack: Stack) -> list[str]:
    return [str(decode_event(r.data).__struct_config__.tag) async for r in stack.log.read()]


async def settle(stack: Stack, delivered: int) -> None:
    """Wait until ``delivered`` notifications are delivered and the tables reflect the log."""
    for _ in range(400):
        if (await tags(stack)).count("notification.delivered") >= delivered:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"fewer than {delivered} notifications delivered")
    await wait_for_position(stack.url, stack.schema, await stack.log.last_position(), 20)


async def tables_text(url: str, schema: str) -> str:
    """Every row of every table of ``schema``, as JSON text."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        )
        names = [str(row[0]) for row in await cur.fetchall()]
        rows: list[str] = []
        for name in names:
            cur = await conn.execute(
                sql.SQL("SELECT row_to_json(t)::text FROM {} t").format(
                    sql.Identifier(schema, name)
                )
            )
            rows += [str(row[0]) for row in await cur.fetchall()]
    assert names, f"no tables in {schema}"
    return "\n".join(rows)


async def log_bytes(log: JetStreamEventLog) -> bytes:
    """The whole stream: every event's bytes, subject and headers."""
    parts: list[bytes] = []
    async for record in log.read():
        parts += [record.data, ".".join(record.subject).encode()]
        parts += [f"{k}={v}".encode() for k, v in record.headers.items()]
    return b"\n".join(parts)


async def test_an_erased_client_is_unreadable_everywhere_yet_its_history_stands(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    await register(stack, "w1", TOKEN_1)
    await register(stack, "w2", TOKEN_2, always_raw=True)
    await register(stack, "w3", TOKEN_3)
    cleartext = {"id": "m1", "payload": {"topic": "t1", "flags": 16, "blob": BLOB}}
    assert (await push(stack, "w1", cleartext)).status_code == 202
    encrypted = {"id": "m2", "payload": {"topic": "t1", "flags": 1, "blob": "c2VjcmV0"}}
    assert (await push(stack, "w1", encrypted)).status_code == 202
    raw = {"topic": "t2", "tag": 4002, "message": RAW_MESSAGE}
    assert (await push(stack, "w2", raw)).status_code == 202
    kept = {"id": "m3", "payload": {"topic": "t3", "flags": 16, "blob": notify_blob(TITLE_3, "b")}}
    assert (await push(stack, "w3", kept)).status_code == 202
    await settle(stack, 4)

    # delivered with the real token and content, and projected readable
    sent = {(s.target.token, s.notification.message_id): s.notification for s in stack.noop.sent}
    assert sent[(TOKEN_1, "m1")].notify is not None
    assert [n.raw.message for (t, _), n in sent.items() if t == TOKEN_2 and n.raw] == [RAW_MESSAGE]
    before = await tables_text(stack.url, stack.schema)
    for secret in (*SECRETS, TOKEN_3, TITLE_3):
        assert secret in before, secret
    # never in the log, not even before the erasure: it holds them sealed
    stored = await log_bytes(stack.log)
    for secret in (*SECRETS, TOKEN_3, TITLE_3, BLOB):
        assert secret.encode() not in stored, secret

    # erase w1 over HTTP, w2 with the command (a process of its own)
    response = await stack.http.post("/admin/clients/w1/erase", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["erased"]["unregistered"] is True
    parser = argparse.ArgumentParser(prog="relaypush")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", "erase", "--client", "w2", "--json"])
    assert await run_audit(args, stack.log, stack.settings) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["client_id"] == "w2"
    assert len(printed["key_ids"]) == 1

    # pushes to an erased client are dropped
    again = {"id": "m4", "payload": {"topic": "t1", "flags": 16, "blob": BLOB}}
    assert (await push(stack, "w1", again)).status_code == 202
    assert (await tags(stack))[-1] == "notification.dropped"
    # a wallet may register again: a new key, and its new data is readable
    await register(stack, "w1", "a-new-token-after-erasure")
    fresh = {"id": "m5", "payload": {"topic": "t1", "flags": 16, "blob": notify_blob("new", "x")}}
    assert (await push(stack, "w1", fresh)).status_code == 202
    await settle(stack, 5)

    after = await tables_text(stack.url, stack.schema)
    for secret in SECRETS:
        assert secret not in after, secret
    assert TOKEN_3 in after
    assert TITLE_3 in after
    assert "a-new-token-after-erasure" in after
    stored = await log_bytes(stack.log)
    for secret in (*SECRETS, BLOB):
        assert secret.encode() not in stored, secret

    # the chain over the stored bytes still verifies
    await Chainer(stack.log, KEY, every_events=5).catch_up()
    report = await verify(stack.log.read(), [KEY.public_key])
    assert report.ok, report.describe()

    # the history lists every event of w1, personal fields shown as erased
    response = await stack.http.get("/admin/events", params={"client": "w1"}, headers=ADMIN)
    events = response.json()["events"]
    assert sorted(e["type"] for e in events) == sorted(
        ["client.registered", "notification.accepted", "notification.accepted"]
        + ["notification.delivered"] * 3
        + ["client.unregistered", "client.erased", "notification.dropped"]
        + ["client.registered", "notification.accepted"]
    )
    by_message = {
        e["data"].get("message_id"): e for e in events if e["type"] == "notification.accepted"
    }
    registrations = [e for e in events if e["type"] == "client.registered"]
    assert registrations[0]["data"]["token_fingerprint"] == "erased"
    assert registrations[1]["data"]["token_fingerprint"].startswith("sha256:")
    assert by_message["m1"]["data"]["sealed"] == "erased"
    assert by_message["m1"]["data"]["notify"] is None
    assert by_message["m2"]["data"]["blob"] == "c2VjcmV0"  # encrypted blobs are never sealed
    assert by_message["m5"]["data"]["notify"] == {"title": "new", "body": "x"}
    text = json.dumps(events)
    for secret in SECRETS:
        assert secret not in text

    # a rebuild (in a process of its own) gives the very tables the live projector has
    rebuilt = f"{stack.schema}_rebuilt"
    opener = await open_sealer(stack.log, stack.settings)
    await rebuild_into(stack.log, stack.url, rebuilt, opener=opener)
    await wait_for_position(stack.url, stack.schema, await stack.log.last_position(), 20)
    assert await compare_schemas(stack.url, stack.schema, rebuilt) == []
    rebuilt_text = await tables_text(stack.url, rebuilt)
    for secret in SECRETS:
        assert secret not in rebuilt_text, secret
    assert TOKEN_3 in rebuilt_text
