"""The projector: feeds the read tables from a durable subscription to the whole log.

Exactly one projector is active per schema: each holds a PostgreSQL session advisory lock keyed
by the schema while it works, and any other waits for it. On start it migrates the schema,
reads its checkpoint and (re)creates its durable consumer at ``checkpoint + 1``, so the
consumer can never disagree with the tables, whatever happened to either (a rebuild, a restore).
Each fetched batch is applied in position order in one transaction with the checkpoint
(:func:`projections.checkpoint.apply_records`), committed, and only then acked. Events at or
below the checkpoint are acked and skipped; a gap (a position past ``checkpoint + 1``) is never
skipped over: the batch is nakked and the consumer recreated at ``checkpoint + 1``. A checkpoint
moved under the projector (a rebuild swapped the schema) is handled the same way.

Locking the checkpoint row first, in the batch's own transaction, is what a rebuild's swap
relies on (:mod:`projections.rebuild`): the swap locks the checkpoint table, so a batch either
commits before the swap reads the live checkpoint or starts after the swap's commit, in the
rebuilt tables, where it finds either the checkpoint it expected (it carries on) or another one
(:class:`CheckpointMoved`: nothing applied, resubscribe there).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
import structlog
from psycopg import sql

from eventstore import (
    REST,
    Delivery,
    EventLog,
    EventLogUnavailable,
    EventStoreError,
    RecordedEvent,
    Subscription,
)
from projections.batch import Opener
from projections.checkpoint import (
    SkippedEvent,
    apply_or_skip,
    mark_caught_up,
    read_checkpoint,
    wait_for_position,
)
from projections.errors import CheckpointMoved, ProjectionUnavailable
from projections.retention import prune
from projections.schema import check_schema_name, lock_key, migrate

__all__ = ["Projector", "default_durable", "wait_for_position"]

log = structlog.get_logger(__name__)

LOCK_RETRY = 0.5
"""Seconds between two attempts at the schema's projector lock."""
CATCH_UP_FETCH_TIMEOUT = 0.5
"""How long :meth:`Projector.catch_up` waits on an empty fetch before it looks at the lag."""
MIN_BACKOFF = 0.1
MAX_BACKOFF = 30.0
"""Seconds between attempts after losing PostgreSQL or the log: doubling from min to max."""
CATCH_UP_ATTEMPTS = 5
"""Consecutive failures without progress after which :meth:`Projector.catch_up` gives up."""
IDLE_MARK: Final = timedelta(seconds=5)
"""How often an idle projector records that it is still caught up with the log."""
PRUNE_EVERY: Final = timedelta(minutes=1)
"""How often the projector deletes rows past their retention (``projections.retention``)."""


def default_durable(schema: str) -> str:
    """The durable consumer name of the projector of ``schema``."""
    return "projector-" + re.sub(r"[^A-Za-z0-9_-]", "_", schema)


def _position(delivery: Delivery) -> int:
    return delivery.event.position


class _Session:
    """One connection holding the lock, one subscription, and where the tables stand."""

    def __init__(self, projector: Projector, conn: psycopg.AsyncConnection[Any]) -> None:
        self.projector = projector
        self.conn = conn
        self.checkpoint = 0
        self.subscription: Subscription | None = None
        self.fresh = True  # nothing delivered since the consumer was (re)created
        self.applied = 0  # events applied in this session
        self.fetched_at: datetime | None = None  # when the last fetch was asked for
        self.marked_at: datetime | None = None  # the last caught-up time recorded
        self.pruned_at: datetime | None = None  # when rows past retention were last deleted

    async def subscribe(self) -> Subscription:
        """Recreate the durable consumer at ``checkpoint + 1``, first applying from the
        projector's history what the log no longer holds."""
        await self.unsubscribe()
        await self.backfill()
        p = self.projector
        self.subscription = await p.log.subscribe(
            p.durable,
            (REST,),
            max_ack_pending=max(1000, 2 * p.batch_size),
            from_position=self.checkpoint + 1,
        )
        self.fresh = True
        return self.subscription

    async def backfill(self) -> None:
        """Apply the events between the checkpoint and the log's first position (the log's
        limits dropped them) from the projector's ``history`` (the archive), when it has one."""
        p = self.projector
        if p.history is None:
            return
        first = await p.log.first_position()
        if first <= self.checkpoint + 1:
            return
        batch: list[RecordedEvent] = []
        async for record in p.history.read(
            from_position=self.checkpoint + 1, to_position=first - 1
        ):
            batch.append(record)
            if len(batch) >= p.batch_size:
                await self._apply_history(batch)
                batch = []
        if batch:
            await self._apply_history(batch)
        if self.checkpoint < first - 1:
            log.error(
                "projector_history_missing",
                schema=p.schema,
                missing_from=self.checkpoint + 1,
                missing_to=first - 1,
            )
        else:
            log.info("projector_backfilled", schema=p.schema, to=self.checkpoint)

    async def _apply_history(self, records: list[RecordedEvent]) -> None:
        p = self.projector
        result = await apply_or_skip(
            self.conn,
            p.schema,
            records,
            expected_checkpoint=self.checkpoint,
            opener=p.opener,
            on_skip=p.skipped,
        )
        self.checkpoint = result.checkpoint
        self.applied += result.applied

    async def unsubscribe(self) -> None:
        if self.subscription is not None:
            subscription, self.subscription = self.subscription, None
            await subscription.close()

    async def fetch(self, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        subscription = self.subscription or await self.subscribe()
        self.fetched_at = self.projector.clock()
        return await subscription.fetch(self.projector.batch_size, timeout)

    async def prune_when_due(self) -> None:
        """Delete rows past their retention, at most every ``PRUNE_EVERY``."""
        p = self.projector
        now = p.clock()
        if p.dedup_retention <= 0 or (
            self.pruned_at is not None and now - self.pruned_at < PRUNE_EVERY
        ):
            return
        self.pruned_at = now
        try:
            deleted = await prune(self.conn, p.schema, now=now, dedup_retention=p.dedup_retention)
        except psycopg.OperationalError as exc:
            raise ProjectionUnavailable(f"pruning {p.schema!r} failed: {exc}") from exc
        if deleted:
            log.info("projection_pruned", schema=p.schema, rows=deleted)

    async def idle(self) -> None:
        """A fetch came back empty: every event appended before it was asked for is at or below
        the checkpoint. Recorded every few seconds, for the deduplication index."""
        when = self.fetched_at
        if when is None:
            return
        if self.marked_at is not None and when - self.marked_at < IDLE_MARK:
            return
        await mark_caught_up(self.conn, self.projector.schema, self.checkpoint, when)
        self.marked_at = when

    async def handle(self, deliveries: Sequence[Delivery]) -> int:
        """Apply, commit, then ack one fetched batch; returns the number of events applied."""
        p = self.projector
        stale: list[Delivery] = []
        fresh: list[Delivery] = []
        rest: list[Delivery] = []
        expected = self.checkpoint + 1
        # the consumer starts at checkpoint + 1: its very first delivery may be further on
        # (nothing in between matches), any later jump is a gap
        first_since_subscribe = self.fresh
        self.fresh = False
        for delivery in sorted(deliveries, key=_position):
            position = delivery.event.position
            trusted = first_since_subscribe and not (stale or fresh)
            if rest or (position > expected and not trusted):
                rest.append(delivery)  # a gap: never skip over it
            elif position < expected:
                stale.append(delivery)  # at or below the checkpoint, or repeated in the batch
            else:
                fresh.append(delivery)  # the next one, or the first after (re)subscribing
                expected = position + 1
        applied = 0
        # the newest delivery had nothing after it: the batch reached the log's head as it was
        # when the fetch was asked for
        newest = max(deliveries, key=_position)
        caught_up_at = self.fetched_at if newest.pending == 0 and not rest else None
        if fresh:
            try:
                result = await apply_or_skip(
                    self.conn,
                    p.schema,
                    [d.event for d in fresh],
                    expected_checkpoint=self.checkpoint,
                    opener=p.opener,
                    caught_up_at=caught_up_at,
                    on_skip=p.skipped,
                )
            except CheckpointMoved as moved:
                log.warning(
                    "projector_checkpoint_moved",
                    schema=p.schema,
                    expected=moved.expected,
                    actual=moved.actual,
                )
                await _settle(deliveries, ack=False)
                self.checkpoint = moved.actual
                await self.subscribe()
                return 0
            except BaseException:
                await _settle(fresh + rest, ack=False)
                raise
            self.checkpoint = result.checkpoint
            applied = result.applied
            self.applied += applied
            if caught_up_at is not None:
                self.marked_at = caught_up_at
        await _settle(stale + fresh, ack=True)
        if rest:
            log.warning(
                "projector_gap",
                schema=p.schema,
                checkpoint=self.checkpoint,
                next_position=rest[0].event.position,
            )
            await _settle(rest, ack=False)
            await self.subscribe()
        return applied


async def _settle(deliveries: Sequence[Delivery], *, ack: bool) -> None:
    """Ack (raising if the log fails) or nak (best effort: the consumer is recreated anyway).
    One after the other: each only queues a message on the connection, and a task per
    delivery would cost more than the acks themselves."""
    if ack:
        for delivery in deliveries:
            await delivery.ack()
        return
    for delivery in deliveries:
        try:
            await delivery.nak()
        except EventStoreError as exc:
            log.info("projector_nak_failed", error=str(exc))
            return


async def _wait(stop: asyncio.Event | None, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Projector:
    """Projects the whole event log into the read tables of one PostgreSQL schema."""

    def __init__(
        self,
        log: EventLog,
        conninfo: str,
        *,
        schema: str,
        durable: str | None = None,
        batch_size: int = 500,
        fetch_timeout: float = 1.0,
        opener: Opener | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        dedup_retention: float = 0.0,
        history: EventLog | None = None,
        on_skip: Callable[[SkippedEvent], None] | None = None,
    ) -> None:
        """``opener`` opens the personal fields events carry sealed (without it, they are
        projected as erased); ``clock`` dates what the projector records of its own progress
        and decides what is past retention; ``dedup_retention``: seconds ``messages`` rows are
        kept (0: forever); ``history`` holds what the log's limits dropped (the archive, read
        with the log: ``relaypush.audit.archive.ArchivedLog``); ``on_skip`` hears of every
        event the tables could not take (recorded in ``projection_skips``, see
        :func:`projections.checkpoint.apply_or_skip`)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.log = log
        self.conninfo = conninfo
        self.schema = check_schema_name(schema)
        self.durable = durable or default_durable(schema)
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.opener = opener
        self.clock = clock
        self.dedup_retention = dedup_retention
        self.history = history
        self.on_skip = on_skip

    def skipped(self, event: SkippedEvent) -> None:
        """An event the tables could not take was recorded and passed over."""
        log.error(
            "projection_event_skipped",
            schema=self.schema,
            position=event.position,
            type=event.type,
            error=event.error,
            hint="the tables go on without it; see `relaypush projections status`",
        )
        if self.on_skip is not None:
            self.on_skip(event)

    @asynccontextmanager
    async def _session(self, stop: asyncio.Event | None) -> AsyncIterator[_Session | None]:
        """Connect, migrate, take the schema's lock (waiting for it), read the checkpoint and
        subscribe; yields None when ``stop`` was set while waiting for the lock."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            raise ProjectionUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        session = _Session(self, conn)
        try:
            await migrate(conn, self.schema)
            if not await self._lock(conn, stop):
                yield None
                return
            session.checkpoint = await read_checkpoint(conn, self.schema)
            await session.subscribe()
            log.info("projector_started", schema=self.schema, checkpoint=session.checkpoint)
            yield session
        except psycopg.OperationalError as exc:
            raise ProjectionUnavailable(f"projector of {self.schema!r} lost PostgreSQL") from exc
        finally:
            try:
                await session.unsubscribe()
            finally:
                await conn.close()

    async def _lock(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event | None) -> bool:
        query = sql.SQL("SELECT pg_try_advisory_lock({})").format(lock_key("project", self.schema))
        waiting = False
        while True:
            cur = await conn.execute(query)
            row = await cur.fetchone()
            if row is not None and row[0]:
                return True
            if not waiting:
                log.info("projector_waiting_for_lock", schema=self.schema)
                waiting = True
            if await _wait(stop, LOCK_RETRY):
                return False

    async def run(self, stop: asyncio.Event) -> None:
        """Project new events as they arrive until ``stop`` is set. Losing PostgreSQL or the
        log is retried with backoff; other errors propagate."""
        backoff = MIN_BACKOFF
        while not stop.is_set():
            try:
                async with self._session(stop) as session:
                    if session is None:
                        return
                    backoff = MIN_BACKOFF
                    while not stop.is_set():
                        deliveries = await session.fetch(self.fetch_timeout)
                        if deliveries:
                            await session.handle(deliveries)
                        else:
                            await session.idle()
                        await session.prune_when_due()
                return
            except (ProjectionUnavailable, EventLogUnavailable) as exc:
                log.warning("projector_retrying", schema=self.schema, error=str(exc), delay=backoff)
                if await _wait(stop, backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def catch_up(self) -> int:
        """Project until nothing is pending; returns the number of events applied. Losing
        PostgreSQL or the log is retried a few times (the count of events survives)."""
        applied = 0
        failures = 0
        while True:
            session_applied = 0
            try:
                async with self._session(None) as session:
                    assert session is not None
                    try:
                        await self._drain(session)
                    finally:
                        session_applied = session.applied
                return applied + session_applied
            except (ProjectionUnavailable, EventLogUnavailable) as exc:
                applied += session_applied
                failures = 0 if session_applied else failures + 1
                if failures >= CATCH_UP_ATTEMPTS:
                    raise
                log.warning("projector_retrying", schema=self.schema, error=str(exc))
                await asyncio.sleep(MIN_BACKOFF * 2**failures)

    async def _drain(self, session: _Session) -> None:
        """Fetch and apply until the consumer has nothing more to hand out."""
        target = await self.log.last_position()
        while True:
            deliveries = await session.fetch(CATCH_UP_FETCH_TIMEOUT)
            if deliveries:
                await session.handle(deliveries)
                if len(deliveries) == self.batch_size:
                    continue
            subscription = session.subscription or await session.subscribe()
            if await subscription.pending() > 0:
                continue
            if session.checkpoint >= target:
                return
            if not deliveries:
                if session.fresh:
                    return  # nothing matches past the checkpoint
                # events handed to a fetch that gave up: hand them out again
                await session.subscribe()

    async def position(self) -> int:
        """The position the tables reflect (0 before the schema exists)."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True
            ) as conn:
                try:
                    return await read_checkpoint(conn, self.schema)
                except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                    return 0
        except psycopg.OperationalError as exc:
            raise ProjectionUnavailable(f"cannot read the checkpoint of {self.schema!r}") from exc
