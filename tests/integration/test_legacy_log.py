"""A log written before the per-client subjects keeps working: read, verified, rebuilt,
dispatched and deduplicated by today's code.

``tests/fixtures/legacy-log.jsonl`` was exported by relaypush at commit a6acc55 (every
notification on subjects of its own, ``<tenant>.notification.<client>.<message>.<kind>``): two
clients, w1's m1 delivered, m2 waiting for a retry, m3 failed for good, a duplicate of m1, a drop
for an unknown client, w2's cleartext c1 delivered and read, p1 accepted and never dispatched,
and three checkpoints signed with the key whose seed is ``SEED``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
from psycopg import sql

from eventstore import ANY, JetStreamEventLog
from projections import Projector, rebuild_into, wait_for_position
from projections.dedup import open_dedup_index
from relaypush.audit.chainer import Chainer
from relaypush.audit.export import import_export, read_export
from relaypush.audit.history import HistoryQuery, history
from relaypush.audit.keys import SigningKey
from relaypush.audit.state import client_state_at
from relaypush.audit.verify import verify
from relaypush.config import DEFAULT_TENANT
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.outcomes import Delivered, Outcome, Target
from relaypush.domain.events import NotificationAccepted, decode_event
from relaypush.metrics import Registry
from relaypush.service import Accepted, Duplicate, RelayService
from tests.integration.conftest import Env

FIXTURE = Path(__file__).parent.parent / "fixtures" / "legacy-log.jsonl"
SEED = "11" * 32
T = DEFAULT_TENANT
WAIT = 30.0
OLD_ACCEPTED_FILTER = (ANY, "notification", ANY, ANY, "accepted")


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        self.sent.append(notification.message_id)
        return Delivered(provider_id="new")

    async def close(self) -> None:
        return None


async def imported(env: Env) -> int:
    lines = FIXTURE.read_bytes().splitlines(keepends=True)
    return await import_export(env.log, read_export(lines))


def body(message_id: str) -> bytes:
    return f'{{"id": "{message_id}", "payload": "ab12:1:ZW5jcnlwdGVk"}}'.encode()


async def rows(env: Env, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(sql.SQL(query).format(schema=sql.Identifier(env.schema)))
        return await cur.fetchall()


async def test_a_legacy_log_verifies_and_reads_as_history(env: Env) -> None:
    assert await imported(env) == 17
    report = await verify(env.log.read(), [SigningKey.from_hex(SEED).public_key])
    assert report.ok, report.describe()
    assert (report.checkpoints, report.protected_upto) == (3, 14)

    positions = [e.position async for e in history(env.log, HistoryQuery(client="w1"))]
    assert positions == [1, 3, 4, 5, 7, 9, 10, 11]
    one = HistoryQuery(client="w1", notification="m1")
    assert [e.type async for e in history(env.log, one)] == [
        "notification.accepted",
        "notification.duplicate",
        "notification.delivered",
    ]
    anywhere = HistoryQuery(notification="m1", tenant=T)
    assert [e.position async for e in history(env.log, anywhere)] == [3, 7, 9]
    state = await client_state_at(env.log, T, "w1")
    assert (state.delivered.ids, state.pending.ids, state.failed.ids) == (["m1"], ["m2"], ["m3"])


async def test_a_legacy_log_rebuilds_the_read_tables(env: Env) -> None:
    await imported(env)
    await rebuild_into(env.log, env.url, env.schema)
    assert await rows(
        env, "SELECT client_id, message_id, status FROM {schema}.messages ORDER BY 1, 2"
    ) == [
        ("nobody", "x1", "dropped"),
        ("w1", "m1", "delivered"),
        ("w1", "m2", "pending"),
        ("w1", "m3", "failed"),
        ("w2", "c1", "delivered"),
        ("w2", "p1", "pending"),
    ]
    assert await rows(env, "SELECT message_id, read, title FROM {schema}.inbox ORDER BY 1") == [
        ("c1", True, "Hi"),
        ("m1", False, None),
        ("m2", False, None),
        ("m3", False, None),
        ("p1", False, None),
    ]


async def test_the_old_dispatcher_durable_is_widened_and_owed_notifications_go_out(
    env: Env,
) -> None:
    await imported(env)
    # the durable as the old code left it: its own filter, m1, m3 and c1 settled, m2 due again
    old = await env.log.subscribe("dispatcher", OLD_ACCEPTED_FILTER, ack_wait=30.0)
    handled = await old.fetch(4, timeout=2.0)
    assert [d.event.position for d in handled] == [3, 4, 5, 6]
    for delivery in handled:
        if delivery.event.position == 4:
            await delivery.nak(0.0)
        else:
            await delivery.ack()
    await old.close()

    provider = Recorder()
    dispatcher = Dispatcher(env.log, {"noop": provider}, deadline=86400 * 365, metrics=Registry())
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    relay = RelayService(env.log, enabled_providers=lambda _: frozenset({"noop"}))
    try:
        assert await relay.push(T, "w1", body("new"), request_id="r") == Accepted("new")
        for _ in range(int(WAIT / 0.05)):
            if sorted(provider.sent) == ["m2", "new", "p1"]:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert sorted(provider.sent) == ["m2", "new", "p1"]
    delivered = [
        decode_event(r.data)
        async for r in env.log.read()
        if r.position > 17 and r.subject[-1] == "delivered"
    ]
    assert sorted((e.message_id, e.attempt) for e in delivered) == [  # type: ignore[union-attr]
        ("m2", 2),
        ("new", 1),
        ("p1", 1),
    ]


async def test_late_copies_of_legacy_notifications_are_duplicates(env: Env) -> None:
    await imported(env)
    relay = RelayService(env.log, enabled_providers=lambda _: frozenset({"noop"}))
    # no index: the client's accepted notifications, old subjects included, are read
    assert await relay.push(T, "w1", body("m1"), request_id="r") == Duplicate("m1")
    # with the index, once the projector has the legacy events
    projector = Projector(env.log, env.url, schema=env.schema, fetch_timeout=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await wait_for_position(env.url, env.schema, await env.log.last_position(), WAIT)
    finally:
        stop.set()
        await task
    async with open_dedup_index(env.url, env.schema) as index:
        indexed = RelayService(
            env.log, enabled_providers=lambda _: frozenset({"noop"}), dedup_index=index
        )
        assert await indexed.push(T, "w2", body("p1"), request_id="r") == Duplicate("p1")
        assert await indexed.push(T, "w2", body("p2"), request_id="r") == Accepted("p2")


async def test_the_chain_goes_on_over_new_subjects(env: Env, nats_url: str) -> None:
    await imported(env)
    relay = RelayService(env.log, enabled_providers=lambda _: frozenset({"noop"}))
    for i in range(7):
        await relay.push(T, "w1", body(f"after-{i}"), request_id="r")
    last_push = await env.log.last_position()
    key = SigningKey.from_hex(SEED)
    chainer = Chainer(env.log, key, every_events=5, metrics=Registry())
    await chainer.catch_up()
    again = await JetStreamEventLog.connect(nats_url, stream=env.schema.upper(), prefix=env.schema)
    try:
        report = await verify(again.read(), [key.public_key])
    finally:
        await again.close()
    assert report.ok, report.describe()
    assert report.protected_upto == last_push
