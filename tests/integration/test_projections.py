"""The read tables over real JetStream and PostgreSQL: rows, replays, crashes, rebuilds.

Each test has its own stream, subject prefix and schemas (named after ``unique_name``) and drops
them at the end. Faults are injected through the event-log seam: wrappers around the real log
that never ack, replay everything, lose a delivery or lag behind. Tests wait on the checkpoint
(``wait_for_position``), never on the clock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from eventstore import EventLog
from projections import (
    Projector,
    apply_records,
    compare_schemas,
    migrate,
    rebuild,
    rebuild_into,
    wait_for_position,
)
from projections.schema import migrations
from projections.status import schema_status
from relaypush.domain.events import (
    ClientRegistered,
    ClientUnregistered,
    Event,
    InboxRead,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    NotifyMessage,
    RawMessage,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantDeleted,
    TenantSuspended,
    TenantUnsuspended,
    encode_event,
)
from relaypush.domain.streams import subject_for
from tests.integration.conftest import Env
from tests.integration.eventlog_faults import LaggingLog, LossyLog, NoAckLog, ReplayingLog

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WAIT = 30.0
E = TypeVar("E", bound=Event)


# -- building and appending events -------------------------------------------------------------


class Clock:
    """Builds events with their own ids and strictly increasing times (second ``n`` of T0)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, event_type: type[E], /, **fields: Any) -> E:
        self.n += 1
        return event_type(event_id=f"ev-{self.n}", occurred_at=self.at(self.n), **fields)

    def at(self, n: int) -> datetime:
        return T0 + timedelta(seconds=n)


async def append_all(log: EventLog, events: Sequence[Event]) -> int:
    """Append in order; the position of the last one."""
    last = 0
    for event in events:
        last = (await log.append(subject_for(event), encode_event(event))).position
    return last


def every_kind(c: Clock, tenant: str = "acme") -> list[Event]:
    """Events of every type, for ``test_each_event_type_lands_in_its_rows`` (the comments are
    their times, which are also their positions when nothing precedes them)."""
    t = tenant
    clear = NotifyMessage(title="Hi", body="there", icon="i", url="u", type="t")
    raw = RawMessage(topic="tp", tag=4002, message="raw-body")
    return [
        c(TenantCreated, tenant_id=t),  # 1
        c(TenantCredentialsChanged, tenant_id=t, kind="apns", fingerprint="fp-apns"),
        c(TenantCredentialsChanged, tenant_id=t, kind="fcm_v1", fingerprint="fp-fcm"),
        c(TenantCredentialsRemoved, tenant_id=t, kind="fcm_v1"),
        c(ClientRegistered, tenant_id=t, client_id="w1", provider="fcm", token="tok-1"),  # 5
        c(ClientRegistered, tenant_id=t, client_id="w1", provider="fcm", token="tok-1b"),
        c(
            ClientRegistered,
            tenant_id=t,
            client_id="w2",
            provider="apns",
            token="tok-2",
            always_raw=True,
        ),
        c(
            NotificationAccepted,
            tenant_id=t,
            client_id="w1",
            message_id="clear",
            dedup_key="k1",
            topic="tp",
            flags=16,
            flag_names=("notify",),
            blob="e30=",
            notify=clear,
        ),
        c(
            NotificationAccepted,
            tenant_id=t,
            client_id="w1",
            message_id="secret",
            dedup_key="k2",
            topic="tp",
            flags=1,
            flag_names=("encrypted",),
            encrypted=True,
            blob="c2VjcmV0",
        ),
        c(  # 10
            NotificationAccepted,
            tenant_id=t,
            client_id="w2",
            message_id="raw",
            dedup_key="k3",
            topic="tp",
            raw=raw,
        ),
        c(NotificationDuplicate, tenant_id=t, client_id="w1", message_id="clear", dedup_key="k1"),
        c(NotificationDuplicate, tenant_id=t, client_id="w1", message_id="clear", dedup_key="k1"),
        c(
            NotificationDelivered,
            tenant_id=t,
            client_id="w1",
            message_id="clear",
            provider="fcm",
            provider_id="fcm-1",
            attempt=1,
            latency_ms=4.5,
        ),
        c(
            NotificationDeliveryFailed,
            tenant_id=t,
            client_id="w1",
            message_id="secret",
            provider="fcm",
            attempt=1,
            permanent=False,
            reason="Unavailable",
            next_attempt_at=c.at(1000),
        ),
        c(  # 15
            NotificationDeliveryFailed,
            tenant_id=t,
            client_id="w2",
            message_id="raw",
            provider="apns",
            attempt=2,
            permanent=True,
            reason="BadDeviceToken",
        ),
        c(ClientUnregistered, tenant_id=t, client_id="w2", reason="token_invalid"),
        c(
            NotificationDropped,
            tenant_id=t,
            client_id="ghost",
            message_id="lost",
            reason="client_not_registered",
        ),
        c(InboxRead, tenant_id=t, client_id="w1", message_ids=("clear", "nowhere")),
        c(TenantSuspended, tenant_id=t, reason="unpaid"),
        c(TenantUnsuspended, tenant_id=t),  # 20
        c(TenantSuspended, tenant_id=t, reason="abuse"),
        c(TenantDeleted, tenant_id=t),
    ]


def mixed(c: Clock, count: int, seed: int) -> list[Event]:
    """Random events over a few clients and messages, including orders a healthy log never
    holds (an outcome before its acceptance, a read before its message), so that batch
    boundaries get every chance to matter."""
    rng = random.Random(seed)
    return [random_event(c, rng) for _ in range(count)]


def random_event(c: Clock, rng: random.Random) -> Event:
    t = rng.choice(("a", "b"))
    client = rng.choice(("c1", "c2", "c3"))
    m = {"tenant_id": t, "client_id": client, "message_id": f"m{rng.randrange(6)}"}
    match rng.randrange(10):
        case 0:
            token = f"tok-{rng.randrange(3)}"
            return c(ClientRegistered, tenant_id=t, client_id=client, provider="noop", token=token)
        case 1:
            return c(ClientUnregistered, tenant_id=t, client_id=client, reason="requested")
        case 2:
            notify = NotifyMessage(title="T", body="B") if rng.random() < 0.3 else None
            names = ("a", "b")[: rng.randrange(3)]
            return c(
                NotificationAccepted,
                **m,
                dedup_key="k",
                topic="tp",
                flags=len(names),
                flag_names=names,
                encrypted=rng.random() < 0.5,
                blob="YmxvYg==",
                notify=notify,
            )
        case 3:
            return c(NotificationDuplicate, **m, dedup_key="k")
        case 4:
            return c(NotificationDropped, **m, reason="tenant_suspended")
        case 5:
            return c(
                NotificationDelivered,
                **m,
                provider="noop",
                provider_id=rng.choice((None, "p")),
                attempt=rng.randrange(1, 4),
                latency_ms=1.0,
            )
        case 6:
            permanent = rng.random() < 0.3
            return c(
                NotificationDeliveryFailed,
                **m,
                provider=rng.choice((None, "noop")),
                attempt=rng.randrange(1, 4),
                permanent=permanent,
                reason=f"r{rng.randrange(3)}",
                next_attempt_at=None if permanent else c.at(5000),
            )
        case 7:
            ids = tuple(f"m{rng.randrange(6)}" for _ in range(rng.randrange(1, 3)))
            return c(InboxRead, tenant_id=t, client_id=client, message_ids=ids)
        case 8:
            return c(TenantSuspended, tenant_id=t, reason=f"r{rng.randrange(3)}")
        case _:
            return c(TenantUnsuspended, tenant_id=t)


# -- reading the tables ------------------------------------------------------------------------

_ORDER = {
    "devices": "tenant_id, client_id",
    "messages": "tenant_id, client_id, message_id",
    "inbox": "tenant_id, client_id, message_id",
    "tenants": "tenant_id",
    "projection_skips": "position",
}


async def table(
    env: Env, name: str, columns: str, schema: str | None = None
) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
        sql.SQL(columns), sql.Identifier(schema or env.schema, name), sql.SQL(_ORDER[name])
    )
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(query)
        return list(await cur.fetchall())


async def snapshot(env: Env) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every read table (the checkpoint's position included, not its time)."""
    rows = {name: await table(env, name, "*") for name in _ORDER}
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT name, position FROM {}").format(
                sql.Identifier(env.schema, "projection_checkpoints")
            )
        )
        rows["projection_checkpoints"] = list(await cur.fetchall())
    return rows


async def equals_rebuild(env: Env) -> list[str]:
    """How the live tables differ from a replay of the whole log into a scratch schema."""
    reference = env.other("ref")
    await rebuild_into(env.log, env.url, reference)
    return await compare_schemas(env.url, env.schema, reference)


@asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[asyncio.Task[None]]:
    """The projector's ``run`` in a task, stopped (and its error raised) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await task


async def reach(env: Env, position: int, task: asyncio.Task[None] | None = None) -> None:
    """Wait for the live checkpoint; fail at once if the projector task died."""
    waiter = asyncio.ensure_future(wait_for_position(env.url, env.schema, position, WAIT))
    if task is None:
        await waiter
        return
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        task.result()
        raise AssertionError("the projector stopped early")
    waiter.result()


# -- the tests ---------------------------------------------------------------------------------


async def test_each_event_type_lands_in_its_rows(env: Env) -> None:
    """Three catch-ups, so that rows are both created and changed by later batches (an inbox
    read, a notification accepted after it was dropped)."""
    c = Clock()
    events = every_kind(c)
    projector = Projector(env.log, env.url, schema=env.schema)
    await append_all(env.log, events[:17])
    unknown = b'{"type":"tenant.renamed","event_id":"x","occurred_at":"2025-03-01T12:00:00Z"}'
    await env.log.append(("acme", "tenant"), unknown)
    assert await projector.catch_up() == 17  # the unknown event is skipped, and passed
    late = {"tenant_id": "acme", "client_id": "w1", "message_id": "late"}
    await append_all(
        env.log, [*events[17:], c(NotificationDropped, **late, reason="tenant_suspended")]
    )
    assert await projector.catch_up() == 6
    revived = [
        c(NotificationAccepted, **late, dedup_key="k4", topic="tp"),  # 24, position 25
        c(NotificationDuplicate, **late, dedup_key="k4"),
    ]
    last = await append_all(env.log, revived)
    assert await projector.catch_up() == 2

    assert await projector.position() == last
    at = c.at
    assert await table(env, "devices", "*") == [
        # tenant.deleted (event 22, position 23) leaves no device of the tenant active
        ("acme", "w1", "fcm", "tok-1b", False, False, at(5), at(6), at(22), "tenant_deleted", 23),
        ("acme", "w2", "apns", "tok-2", True, False, at(7), at(7), at(16), "token_invalid", 16),
    ]
    assert await table(
        env, "messages", "client_id, message_id, topic, flags, flag_names, encrypted, raw, status"
    ) == [
        ("ghost", "lost", None, 0, [], False, False, "dropped"),
        ("w1", "clear", "tp", 16, ["notify"], False, False, "delivered"),
        ("w1", "late", "tp", 0, [], False, False, "pending"),
        ("w1", "secret", "tp", 1, ["encrypted"], True, False, "pending"),
        ("w2", "raw", "tp", 0, [], False, True, "failed"),
    ]
    assert await table(
        env,
        "messages",
        "message_id, attempts, duplicates, provider, provider_id, last_error, next_attempt_at,"
        " accepted_at, delivered_at, failed_at, updated_at, accepted_position",
    ) == [
        ("lost", 0, 0, None, None, "client_not_registered", None, None, None, None, at(17), None),
        ("clear", 1, 2, "fcm", "fcm-1", None, None, at(8), at(13), None, at(13), 8),
        ("late", 0, 1, None, None, None, None, at(24), None, None, at(25), 25),
        ("secret", 1, 0, "fcm", None, "Unavailable", at(1000), at(9), None, None, at(14), 9),
        ("raw", 2, 0, "apns", None, "BadDeviceToken", None, at(10), None, at(15), at(15), 10),
    ]
    assert await table(env, "inbox", "*") == [
        ("acme", "w1", "clear", "tp", 16, "Hi", "there", "i", "u", "t", None, None, at(8),
         True, at(18)),
        ("acme", "w1", "late", "tp", 0, None, None, None, None, None, None, None, at(24),
         False, None),
        ("acme", "w1", "secret", "tp", 1, None, None, None, None, None, "c2VjcmV0", None, at(9),
         False, None),
        ("acme", "w2", "raw", "tp", 0, None, None, None, None, None, None, "raw-body", at(10),
         False, None),
    ]  # fmt: skip
    assert await table(env, "tenants", "*") == [
        ("acme", at(1), True, "abuse", "fp-apns", None, at(22), None),
    ]


async def test_a_redelivered_batch_changes_nothing(env: Env) -> None:
    last = await append_all(env.log, every_kind(Clock()))
    assert await Projector(env.log, env.url, schema=env.schema).catch_up() == last
    before = await snapshot(env)

    records = [record async for record in env.log.read()]
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        replay = await apply_records(conn, env.schema, records)
    assert (replay.applied, replay.checkpoint) == (0, last)
    replaying = Projector(ReplayingLog(env.log), env.url, schema=env.schema, batch_size=5)
    assert await replaying.catch_up() == 0

    assert await snapshot(env) == before


async def test_a_crash_between_commit_and_ack_replays_harmlessly(env: Env) -> None:
    c = Clock()
    first = await append_all(env.log, mixed(c, 120, seed=1))
    crashed = Projector(NoAckLog(env.log), env.url, schema=env.schema, batch_size=50)
    assert await crashed.catch_up() == first  # committed, never acked; its subscription closed

    last = await append_all(env.log, mixed(c, 30, seed=2))
    restarted = Projector(env.log, env.url, schema=env.schema, batch_size=50)
    assert await restarted.catch_up() == last - first
    assert await restarted.position() == last
    assert await equals_rebuild(env) == []


async def test_a_gap_is_fetched_again_never_skipped(env: Env) -> None:
    last = await append_all(env.log, mixed(Clock(), 60, seed=3))
    lossy = LossyLog(env.log)
    assert await Projector(lossy, env.url, schema=env.schema, batch_size=10).catch_up() == last
    assert len(lossy.lost) == 1
    assert await equals_rebuild(env) == []


async def test_live_tables_equal_a_rebuild_whatever_the_batches(env: Env) -> None:
    c = Clock()
    await append_all(env.log, every_kind(c))
    last = await append_all(env.log, mixed(c, 400, seed=4))
    projector = Projector(env.log, env.url, schema=env.schema, batch_size=7)
    async with running(projector) as task:
        await reach(env, last, task)

    one_by_one = env.other("single")
    assert await rebuild_into(env.log, env.url, one_by_one, batch_size=1) == last
    assert await compare_schemas(env.url, env.schema, one_by_one) == []
    assert await equals_rebuild(env) == []


async def test_compare_schemas_lists_each_differing_row(env: Env) -> None:
    await append_all(env.log, every_kind(Clock()))
    await Projector(env.log, env.url, schema=env.schema).catch_up()
    copy = env.other("copy")
    await rebuild_into(env.log, env.url, copy)
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET token = 'changed' WHERE client_id = 'w1'").format(
                sql.Identifier(copy, "devices")
            )
        )
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE message_id = 'raw'").format(sql.Identifier(copy, "inbox"))
        )
    differences = await compare_schemas(env.url, env.schema, copy)
    assert len(differences) == 2
    assert differences[0].startswith("devices tenant_id='acme', client_id='w1': token:")
    assert differences[1].startswith(f"inbox: only in {env.schema}: ")


async def test_rebuild_swaps_and_the_running_projector_carries_on(env: Env) -> None:
    c = Clock()
    first = await append_all(env.log, every_kind(c) + mixed(c, 100, seed=5))
    projector = Projector(env.log, env.url, schema=env.schema, batch_size=20)
    async with running(projector) as task:
        await reach(env, first, task)
        seen: list[tuple[int, int]] = []
        more = mixed(c, 200, seed=6)
        applied, last = await asyncio.gather(
            rebuild(env.log, env.url, env.schema, progress=lambda d, o: seen.append((d, o))),
            append_all(env.log, more),
        )
        assert first <= applied <= last
        assert seen[-1][0] == seen[-1][1] == applied
        after = await append_all(env.log, mixed(c, 50, seed=7))
        await reach(env, after, task)

    assert await equals_rebuild(env) == []
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname IN (%s, %s)",
            (env.other("rebuild"), env.other("old")),
        )
        assert await cur.fetchall() == []


async def test_a_rebuild_behind_the_projector_is_caught_up_not_skipped(env: Env) -> None:
    c = Clock()
    first = await append_all(env.log, mixed(c, 150, seed=8))
    projector = Projector(env.log, env.url, schema=env.schema, batch_size=25)
    async with running(projector) as task:
        await reach(env, first, task)
        behind = first - 40  # as if restored from an older copy
        assert await rebuild(LaggingLog(env.log, behind), env.url, env.schema) == behind
        last = await append_all(env.log, mixed(c, 20, seed=9))
        await reach(env, last, task)
    assert await equals_rebuild(env) == []


async def test_only_one_projector_works_a_schema(env: Env) -> None:
    c = Clock()
    first = await append_all(env.log, mixed(c, 40, seed=10))
    async with running(Projector(env.log, env.url, schema=env.schema)) as task:
        await reach(env, first, task)
        second = asyncio.create_task(Projector(env.log, env.url, schema=env.schema).catch_up())
        last = await append_all(env.log, mixed(c, 40, seed=11))
        await reach(env, last, task)
        assert not second.done()  # waiting for the lock the running projector holds
    assert await second == 0
    assert await equals_rebuild(env) == []


async def test_concurrent_migrations_apply_each_version_once(env: Env) -> None:
    async def migrate_once() -> None:
        async with await psycopg.AsyncConnection.connect(env.url) as conn:
            await migrate(conn, env.schema)

    await asyncio.gather(*(migrate_once() for _ in range(4)))
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT version, name FROM {} ORDER BY version").format(
                sql.Identifier(env.schema, "schema_migrations")
            )
        )
        assert await cur.fetchall() == [(m.version, m.name) for m in migrations()]


async def test_an_event_the_tables_cannot_take_is_skipped_named_and_rebuilt_alike(
    env: Env,
) -> None:
    """A flags value no bigint holds (the API refuses it; an older writer or a bug might not)
    fails its batch deterministically: it is narrowed down to its event, recorded with its
    position, and the projection goes on; a rebuild meets and records it the same way."""
    c = Clock()
    before = mixed(c, 30, seed=21)
    poison = c(
        NotificationAccepted,
        tenant_id="acme",
        client_id="w1",
        message_id="huge-flags",
        dedup_key="k",
        topic="tp",
        flags=2**70,
    )
    after = mixed(c, 30, seed=22)
    await append_all(env.log, before)
    poison_position = (await env.log.append(subject_for(poison), encode_event(poison))).position
    last = await append_all(env.log, after)
    skipped: list[int] = []
    projector = Projector(
        env.log, env.url, schema=env.schema, on_skip=lambda s: skipped.append(s.position)
    )
    assert await projector.catch_up() == last - 1  # every event but the poison one
    assert skipped == [poison_position]
    assert await table(env, "projection_skips", "position, type") == [
        (poison_position, "notification.accepted")
    ]
    status = await schema_status(env.url, env.schema)
    assert status.skipped.count == 1
    assert status.skipped.last[0][:2] == (poison_position, "notification.accepted")
    assert "flags" in status.skipped.last[0][2] or "out of range" in status.skipped.last[0][2]
    assert await equals_rebuild(env) == []
