"""Rebuilding the read tables while the service writes and the projector projects.

A writer appends a realistic mix (registrations, accepted notifications, deliveries, failures,
duplicates, inbox reads) lane by lane, as the API and the dispatcher would; a live projector
projects it; a rebuild runs and swaps in the middle of it. When the writer stops and the
projector has caught up, the live tables must equal a replay of the whole log row for row:
duplicates and attempts are counters, so an event applied twice (or missed) would show.

The interleavings that matter are also forced one at a time: a projector batch in flight when
the swap starts (the swap waits for it and includes it), a table that is not a projection, a
second rebuild. ``projections status`` is checked through the CLI's own function. Every wait is
on a condition (a position, a count, a lock in ``pg_locks``), never on the clock.
"""

from __future__ import annotations

import asyncio
import heapq
import importlib
import io
import json
import os
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from eventstore import (
    REST,
    EventLog,
    JetStreamEventLog,
    RecordedEvent,
    SubjectFilter,
    SubjectFilters,
    Subscription,
)
from projections import (
    Projector,
    RebuildError,
    apply_events,
    apply_records,
    compare_schemas,
    migrate,
    rebuild,
    rebuild_and_swap,
    rebuild_into,
    swap_schemas,
    wait_for_position,
)
from projections.batch import decode_records
from projections.schema import lock_key
from relaypush import cli
from relaypush.config import Settings
from relaypush.domain.events import (
    ClientRegistered,
    ClientUnregistered,
    Event,
    InboxRead,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDuplicate,
    ProviderType,
    encode_event,
)
from relaypush.domain.streams import subject_for
from tests.integration.eventlog_faults import LaggingLog, WrappedLog

pytestmark = pytest.mark.integration

rebuild_module = importlib.import_module("projections.rebuild")  # shadowed by the function

T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
WAIT = 60.0
POLL = 0.01


@dataclass(frozen=True)
class Env:
    log: JetStreamEventLog
    nats_url: str
    url: str
    schema: str
    stream: str

    def other(self, suffix: str) -> str:
        return f"{self.schema}_{suffix}"

    def settings(self, data_dir: Path, **changes: Any) -> Settings:
        fields: dict[str, Any] = {
            "nats_url": self.nats_url,
            "database_url": self.url,
            "data_dir": data_dir,
            "stream_name": self.stream,
            "subject_prefix": self.schema,
            "database_schema": self.schema,
        }
        fields.update(changes)
        return Settings(**fields)


@pytest_asyncio.fixture(name="env")
async def fx_env(nats_url: str, database_url: str, unique_name: str) -> AsyncIterator[Env]:
    """A fresh stream and prefix; every schema named after ``unique_name`` dropped at the end."""
    stream = unique_name.upper()
    log = await JetStreamEventLog.connect(nats_url, stream=stream, prefix=unique_name)
    try:
        yield Env(log, nats_url, database_url, unique_name, stream)
    finally:
        await log.close()
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
                (unique_name, unique_name + "\\_%"),
            )
            for (name,) in await cur.fetchall():
                await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


# -- the writer ----------------------------------------------------------------------------------


@dataclass
class Lane:
    """One stream of plausible events over a few clients of one tenant: what one API process
    and the dispatcher would append for them."""

    index: int
    rng: random.Random
    n: int = 0
    registered: set[str] = field(default_factory=set)
    pending: dict[str, list[str]] = field(default_factory=dict)  # client -> message ids
    recent: dict[str, list[str]] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return f"tenant-{self.index % 3}"

    def _event(self, kind: type[Event], **fields: Any) -> Event:
        self.n += 1
        return kind(
            event_id=f"l{self.index}-{self.n}",
            occurred_at=T0 + timedelta(milliseconds=self.n),
            tenant_id=self.tenant,
            **fields,
        )

    def next(self) -> Event:
        rng = self.rng
        client = f"c{self.index}-{rng.randrange(6)}"
        if client not in self.registered or rng.random() < 0.03:
            self.registered.add(client)
            provider: ProviderType = rng.choice(("noop", "fcm", "apns"))
            token = f"tok-{rng.randrange(10_000)}"
            return self._event(ClientRegistered, client_id=client, provider=provider, token=token)
        pending = self.pending.setdefault(client, [])
        recent = self.recent.setdefault(client, [])
        roll = rng.random()
        if roll < 0.38 or not recent:
            message = f"m{self.index}-{self.n}"
            pending.append(message)
            recent.append(message)
            del recent[:-8]
            return self._event(
                NotificationAccepted,
                client_id=client,
                message_id=message,
                dedup_key=f"k-{message}",
                topic="topic",
                flags=1,
                flag_names=("encrypted",),
                encrypted=True,
                blob="YmxvYg==",
            )
        if roll < 0.55:
            message = rng.choice(recent)
            return self._event(
                NotificationDuplicate,
                client_id=client,
                message_id=message,
                dedup_key=f"k-{message}",
            )
        if roll < 0.85 and pending:
            message = pending.pop(0)
            return self._event(
                NotificationDelivered,
                client_id=client,
                message_id=message,
                provider="noop",
                provider_id=f"p-{self.n}",
                attempt=rng.randrange(1, 3),
                latency_ms=2.5,
            )
        if roll < 0.92:
            message = rng.choice(recent)
            return self._event(
                NotificationDeliveryFailed,
                client_id=client,
                message_id=message,
                provider="noop",
                attempt=rng.randrange(1, 4),
                permanent=False,
                reason="Unavailable",
                next_attempt_at=T0 + timedelta(hours=1),
            )
        if roll < 0.97:
            return self._event(InboxRead, client_id=client, message_ids=tuple(recent[-2:]))
        self.registered.discard(client)
        return self._event(ClientUnregistered, client_id=client, reason="requested")


class Writer:
    """Appends lane by lane, lanes concurrently, until stopped; says when a count is reached."""

    def __init__(self, log: EventLog, lanes: int, seed: int) -> None:
        self.log = log
        self.lanes = [Lane(i, random.Random(seed * 1000 + i)) for i in range(lanes)]
        self.count = 0
        self.stop = asyncio.Event()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []

    async def _run(self, lane: Lane, limit: int | None) -> None:
        written = 0
        while not self.stop.is_set() and (limit is None or written < limit):
            event = lane.next()
            await self.log.append(subject_for(event), encode_event(event))
            written += 1
            self.count += 1
            while self._waiters and self._waiters[0][0] <= self.count:
                heapq.heappop(self._waiters)[2].set_result(None)

    async def write(self, per_lane: int | None = None) -> None:
        """Every lane at once, ``per_lane`` events each (or until ``stop``)."""
        await asyncio.gather(*(self._run(lane, per_lane) for lane in self.lanes))

    async def reached(self, count: int) -> None:
        if self.count >= count:
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (count, id(future), future))
        await asyncio.wait_for(future, WAIT)


@asynccontextmanager
async def writing(writer: Writer) -> AsyncIterator[Writer]:
    task = asyncio.create_task(writer.write())
    try:
        yield writer
    finally:
        writer.stop.set()
        await task


@asynccontextmanager
async def running(projector: Projector) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await task


async def reach(env: Env, position: int, task: asyncio.Task[None]) -> None:
    """Wait for the live checkpoint; fail at once if the projector task died."""
    waiter = asyncio.ensure_future(wait_for_position(env.url, env.schema, position, WAIT))
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        task.result()
        raise AssertionError("the projector stopped early")
    waiter.result()


async def equals_rebuild(env: Env) -> list[str]:
    """How the live tables differ from a replay of the whole log into a scratch schema."""
    reference = env.other("ref")
    await rebuild_into(env.log, env.url, reference)
    return await compare_schemas(env.url, env.schema, reference)


async def schemas(env: Env) -> set[str]:
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
            (env.schema, env.schema + "\\_%"),
        )
        return {str(r[0]) for r in await cur.fetchall()}


# -- the tests -----------------------------------------------------------------------------------


class SubscriptionsSeen(WrappedLog):
    """The real log, noting where the projector (re)creates its consumer: a resubscription is
    how it recovers from a checkpoint moved under it."""

    def __init__(self, inner: EventLog) -> None:
        super().__init__(inner)
        self.starts: list[int | None] = []

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        self.starts.append(from_position)
        return await super().subscribe(
            durable,
            subject_filter,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            from_position=from_position,
        )


class ReplayHeldBack(WrappedLog):
    """The real log, whose first read pauses after its first event until the writer wrote
    ``more`` events: the service is sure to write while the rebuild replays."""

    def __init__(self, inner: EventLog, writer: Writer, more: int) -> None:
        super().__init__(inner)
        self.writer = writer
        self.more = more
        self.held = False

    def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        records = super().read(
            subject_filter,
            from_position=from_position,
            to_position=to_position,
            from_time=from_time,
        )
        if self.held:
            return records
        self.held = True
        return self._held_back(records)

    async def _held_back(
        self, records: AsyncIterator[RecordedEvent]
    ) -> AsyncIterator[RecordedEvent]:
        first = True
        async for record in records:
            yield record
            if first:
                first = False
                await self.writer.reached(self.writer.count + self.more)


@pytest.mark.parametrize(
    "swap_lag",
    [pytest.param(50, id="catch-up-rounds"), pytest.param(10**9, id="all-in-the-swap")],
)
async def test_rebuild_under_concurrent_writes_misses_nothing_and_repeats_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch, swap_lag: int
) -> None:
    """With a small ``SWAP_LAG`` this small log goes through every phase (replay, catch-up
    rounds, the rest inside the swap); with a huge one, everything written during the replay
    is caught up inside the swap."""
    monkeypatch.setattr(rebuild_module, "SWAP_LAG", swap_lag)
    writer = Writer(env.log, lanes=6, seed=1)
    await writer.write(per_lane=500)
    first = await env.log.last_position()
    seen_log = SubscriptionsSeen(env.log)
    projector = Projector(seen_log, env.url, schema=env.schema, batch_size=100)
    progress: list[tuple[int, int]] = []
    async with running(projector) as task:
        await reach(env, first, task)
        async with writing(writer):
            await writer.reached(first + 300)  # the service is busy
            during = writer.count
            result = await rebuild_and_swap(
                ReplayHeldBack(env.log, writer, 200),
                env.url,
                env.schema,
                batch_size=250,
                progress=lambda done, target: progress.append((done, target)),
            )
            await writer.reached(writer.count + 300)  # and stays busy after the swap
        last = await env.log.last_position()
        assert last == writer.count
        await reach(env, last, task)

    assert during <= result.position < last  # the swap came in the middle of the writes
    assert (result.catch_up_rounds > 0) == (swap_lag == 50)
    assert result.applied == result.position  # every event of the log is one the tables take
    assert result.carried == ()
    # the hand-over: when the rebuilt tables were caught up to the live checkpoint the
    # projector carried on with the same consumer; when they were ahead of it, it
    # resubscribed once, right after them
    assert result.live_position is not None
    handed_over = [] if result.position == result.live_position else [result.position + 1]
    assert seen_log.starts == [1, *handed_over]
    assert progress[-1] == (result.position, result.position)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert all(done <= target for done, target in progress)
    # nothing missed, nothing applied twice: row for row what a replay of the log gives
    assert await equals_rebuild(env) == []
    assert await schemas(env) == {env.schema, env.other("ref")}


async def test_the_swap_waits_for_a_batch_in_flight_and_takes_it_in(env: Env) -> None:
    """A projector batch holding the checkpoint row when the swap starts: the swap waits for
    its commit, then catches the rebuilt tables up to it under the lock, so the projector goes
    on from there without a resubscription and without applying anything twice."""
    writer = Writer(env.log, lanes=2, seed=2)
    await writer.write(per_lane=150)
    records = [r async for r in env.log.read()]
    assert len(records) == 300
    rebuilt = env.other("rebuild")
    # the rebuilt tables stop at 100, the live ones are at 200, a batch to 250 is in flight
    assert await rebuild_into(LaggingLog(env.log, 100), env.url, rebuilt) == 100
    async with (
        await psycopg.AsyncConnection.connect(env.url, autocommit=True) as projector_conn,
        await psycopg.AsyncConnection.connect(env.url, autocommit=True) as swap_conn,
    ):
        await migrate(projector_conn, env.schema)
        assert (await apply_records(projector_conn, env.schema, records[:200])).checkpoint == 200
        checkpoints = sql.Identifier(env.schema, "projection_checkpoints")
        async with projector_conn.transaction(), projector_conn.cursor() as cur:
            # what apply_records does, held open in the middle
            await cur.execute(
                sql.SQL("SELECT position FROM {} WHERE name = 'read_models' FOR UPDATE").format(
                    checkpoints
                )
            )
            assert await cur.fetchone() == (200,)
            await apply_events(cur, env.schema, decode_records(records[200:250]).events)
            await cur.execute(
                sql.SQL("UPDATE {} SET position = 250 WHERE name = 'read_models'").format(
                    checkpoints
                )
            )
            swap = asyncio.create_task(swap_schemas(swap_conn, env.schema, rebuilt, log=env.log))
            await blocked_on(env, swap_conn.info.backend_pid, "projection_checkpoints", swap)
        assert await swap == 250  # rebuilt from 100 to the committed 250, in the swap

    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT position FROM {} WHERE name = 'read_models'").format(checkpoints)
        )
        assert await cur.fetchone() == (250,)
    assert await Projector(env.log, env.url, schema=env.schema).catch_up() == 50
    assert await equals_rebuild(env) == []
    assert env.other("old") not in await schemas(env)


async def blocked_on(env: Env, pid: int, table: str, task: asyncio.Task[Any]) -> None:
    """Wait until backend ``pid`` waits for a lock on ``table`` of the live schema."""
    relation = f"{env.schema}.{table}"
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        async with asyncio.timeout(WAIT):
            while True:
                cur = await conn.execute(
                    "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted"
                    " AND relation = to_regclass(%s)",
                    (pid, relation),
                )
                if await cur.fetchone() is not None:
                    return
                if task.done():
                    task.result()
                    raise AssertionError("the swap did not wait")
                await asyncio.sleep(POLL)


async def test_a_table_that_is_not_a_projection_keeps_its_rows(env: Env) -> None:
    writer = Writer(env.log, lanes=2, seed=3)
    await writer.write(per_lane=100)
    projector = Projector(env.log, env.url, schema=env.schema)
    assert await projector.catch_up() == 200
    notes = sql.Identifier(env.schema, "tenant_notes")
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " tenant_id text NOT NULL, note text NOT NULL)"
            ).format(notes)
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (tenant_id, note) VALUES ('tenant-0', 'a'), ('tenant-1', 'b')"
            ).format(notes)
        )
    await writer.write(per_lane=20)
    result = await rebuild_and_swap(env.log, env.url, env.schema)
    assert result.carried == ("tenant_notes",)
    assert result.position == 240

    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("INSERT INTO {} (tenant_id, note) VALUES ('tenant-2', 'c')").format(notes)
        )
        cur = await conn.execute(
            sql.SQL("SELECT id, tenant_id, note FROM {} ORDER BY id").format(notes)
        )
        assert await cur.fetchall() == [
            (1, "tenant-0", "a"),
            (2, "tenant-1", "b"),
            (3, "tenant-2", "c"),
        ]
    assert await equals_rebuild(env) == []
    assert await schemas(env) == {env.schema, env.other("ref")}


async def test_a_table_depending_on_a_projection_stops_the_rebuild(env: Env) -> None:
    writer = Writer(env.log, lanes=1, seed=4)
    await writer.write(per_lane=50)
    await Projector(env.log, env.url, schema=env.schema).catch_up()
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (tenant_id text, client_id text,"
                " FOREIGN KEY (tenant_id, client_id) REFERENCES {})"
            ).format(
                sql.Identifier(env.schema, "device_labels"), sql.Identifier(env.schema, "devices")
            )
        )
    with pytest.raises(RebuildError, match="device_labels refers to the projection table devices"):
        await rebuild(env.log, env.url, env.schema)
    assert await schemas(env) == {env.schema}  # the live schema untouched, the rebuild dropped


async def test_one_rebuild_at_a_time_and_status_shows_it(env: Env, tmp_path: Path) -> None:
    writer = Writer(env.log, lanes=1, seed=5)
    await writer.write(per_lane=30)
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("SELECT pg_advisory_lock({})").format(lock_key("rebuild", env.schema))
        )
        await migrate(conn, env.other("rebuild"))
        with pytest.raises(RebuildError, match="already running"):
            await rebuild(env.log, env.url, env.schema)
        out = await status(env.settings(tmp_path))
        assert f"rebuild: running (PostgreSQL pid {conn.info.backend_pid}" in out
        assert f"{env.schema}_rebuild at position 0, lag 30" in out
    assert "rebuild:" not in await status(env.settings(tmp_path))


async def status(settings: Settings) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        await cli._status(settings)
    return out.getvalue()


async def test_status_reports_position_lag_and_the_projector(env: Env, tmp_path: Path) -> None:
    writer = Writer(env.log, lanes=2, seed=6)
    await writer.write(per_lane=20)
    projector = Projector(env.log, env.url, schema=env.schema)
    assert await projector.catch_up() == 40
    await writer.write(per_lane=6)

    out = await status(env.settings(tmp_path))
    lines = out.splitlines()
    assert lines[0] == f"log head: 52 (stream {env.stream})"
    assert lines[1].startswith(f"{env.schema}.read_models: position 40, lag 12, updated 20")
    assert lines[1].endswith("s ago)")
    assert lines[2] == f"projector: not running (nobody holds the lock of {env.schema})"
    assert len(lines) == 3

    # the embedded default: no URLs, the servers of a running ``serve`` named in runtime.json
    with embedded_runtime(tmp_path, env) as data_dir:
        embedded = env.settings(data_dir, nats_url=None, database_url=None)
        async with running(projector) as task:
            await reach(env, 52, task)
            lines = (await status(embedded)).splitlines()
    assert lines[0] == f"log head: 52 (stream {env.stream})"
    assert f"{env.schema}.read_models: position 52, lag 0, updated " in lines[1]
    assert lines[2].startswith(
        f"projector: running (holds the lock of {env.schema}: PostgreSQL pid "
    )


@contextmanager
def embedded_runtime(tmp_path: Path, env: Env) -> Iterator[Path]:
    """A data dir whose runtime.json names the test's servers, as a running serve's would."""
    data_dir = tmp_path / "embedded"
    data_dir.mkdir()
    runtime_file = data_dir / "runtime.json"
    runtime_file.write_text(
        json.dumps({"pid": os.getpid(), "nats_url": env.nats_url, "database_url": env.url})
    )
    try:
        yield data_dir
    finally:
        runtime_file.unlink()
