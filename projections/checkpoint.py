"""The checkpoint guard: a batch is applied in the same transaction that moves the checkpoint.

``<schema>.projection_checkpoints`` holds one row (``read_models``) with the position of the last
event the read tables reflect. :func:`apply_records` locks that row, drops the records at or
below it, applies the rest with every applier and moves the row, all in one transaction: a batch
delivered twice, or replayed after a crash between commit and ack, changes nothing the second
time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from eventstore import RecordedEvent
from projections import devices, inbox, messages, tenants
from projections.batch import Batch, Opener, PositionedEvent, decode_records
from projections.errors import CheckpointMoved, PoisonBatch, ProjectionUnavailable
from projections.schema import CHECKPOINT_NAME
from relaypush.domain.events import Event

__all__ = [
    "AppliedBatch",
    "SkippedEvent",
    "apply_events",
    "apply_or_skip",
    "apply_records",
    "mark_caught_up",
    "read_checkpoint",
    "wait_for_position",
]

_TRANSIENT = (
    psycopg.OperationalError,  # lost connection, deadlock, serialisation failure, shutdown
    psycopg.errors.UndefinedTable,  # the schema was swapped or dropped mid-batch
    psycopg.errors.InvalidSchemaName,
)
_DETERMINISTIC = (
    psycopg.errors.DataError,  # a value the column cannot hold
    psycopg.errors.IntegrityError,  # a constraint the row breaks
    psycopg.errors.ProgramLimitExceeded,  # an index row or a statement too large
    psycopg.errors.FeatureNotSupported,
    ValueError,  # the appliers' own refusals, msgspec's validation errors
    TypeError,
    KeyError,
    AttributeError,
)
"""What retrying the same batch cannot change: the batch holds an event that cannot be applied.
Checked before :data:`_TRANSIENT` (``ProgramLimitExceeded`` is an ``OperationalError``)."""

Applier = Callable[[psycopg.AsyncCursor[Any], str, Batch], Awaitable[None]]

_APPLIERS: tuple[tuple[frozenset[type[Event]], Applier], ...] = (
    (devices.EVENT_TYPES, devices.apply),
    (messages.EVENT_TYPES, messages.apply),
    (inbox.EVENT_TYPES, inbox.apply),
    (tenants.EVENT_TYPES, tenants.apply),
)
_ROUTES: dict[type[Event], tuple[int, ...]] = {
    kind: tuple(i for i, (kinds, _) in enumerate(_APPLIERS) if kind in kinds)
    for kinds, _ in _APPLIERS
    for kind in kinds
}

POLL_INTERVAL = 0.02
"""How often :func:`wait_for_position` looks at the checkpoint, in seconds."""


@dataclass(frozen=True, slots=True)
class AppliedBatch:
    """What :func:`apply_records` did: events applied, and the checkpoint after the batch."""

    applied: int
    checkpoint: int


@cache
def _select_sql(schema: str, *, lock: bool) -> sql.Composed:
    return sql.SQL("SELECT position FROM {} WHERE name = %s{}").format(
        sql.Identifier(schema, "projection_checkpoints"),
        sql.SQL(" FOR UPDATE") if lock else sql.SQL(""),
    )


@cache
def _update_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} AS c (name, position, updated_at, caught_up_at) VALUES (%s, %s, now(), %s)"
        " ON CONFLICT (name) DO UPDATE SET position = excluded.position,"
        " updated_at = excluded.updated_at,"
        " caught_up_at = coalesce(excluded.caught_up_at, c.caught_up_at)"
    ).format(sql.Identifier(schema, "projection_checkpoints"))


@cache
def _caught_up_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "UPDATE {} SET caught_up_at = %s WHERE name = %s AND position = %s"
        " AND (caught_up_at IS NULL OR caught_up_at < %s)"
    ).format(sql.Identifier(schema, "projection_checkpoints"))


async def _position(cur: psycopg.AsyncCursor[Any], schema: str, *, lock: bool) -> int:
    await cur.execute(_select_sql(schema, lock=lock), (CHECKPOINT_NAME,))
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def read_checkpoint(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    """The position the read tables of ``schema`` reflect (0 before any event)."""
    async with conn.cursor() as cur:
        return await _position(cur, schema, lock=False)


async def apply_events(cur: psycopg.AsyncCursor[Any], schema: str, batch: Batch) -> None:
    """Apply events (ascending positions) to every read table, without any guard. One pass
    hands each read model its own events, in order."""
    parts: list[list[PositionedEvent]] = [[] for _ in _APPLIERS]
    routes = _ROUTES
    for item in batch:
        for index in routes.get(type(item[1]), ()):
            parts[index].append(item)
    for (_, apply), part in zip(_APPLIERS, parts, strict=True):
        if part:
            await apply(cur, schema, part)


async def apply_records(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    records: Iterable[RecordedEvent],
    *,
    expected_checkpoint: int | None = None,
    opener: Opener | None = None,
    caught_up_at: datetime | None = None,
) -> AppliedBatch:
    """In one transaction: lock the checkpoint, skip records at or below it, apply the others
    and move the checkpoint to the highest position among them. ``opener`` opens the sealed
    personal fields of the events first, before the transaction. ``caught_up_at``, when the
    caller knows that every event appended before that time is in ``records`` or below the
    checkpoint, is recorded with it (the deduplication index relies on it).

    With ``expected_checkpoint``, raise :class:`CheckpointMoved` (applying nothing) when the
    stored checkpoint differs: someone rebuilt or restored the schema. Failures worth a retry
    (connection lost, deadlock, schema swapped mid-batch) are raised as
    :class:`ProjectionUnavailable`.
    """
    decoded = decode_records(records)
    opened = decoded.events
    if opener is not None and opened:
        opened = await opener.open_batch(opened)
    try:
        async with conn.transaction(), conn.cursor() as cur:
            current = await _position(cur, schema, lock=True)
            if expected_checkpoint is not None and current != expected_checkpoint:
                raise CheckpointMoved(expected_checkpoint, current)
            if decoded.last_position <= current:
                return AppliedBatch(0, current)
            events = [pe for pe in opened if pe[0] > current]
            async with conn.pipeline():
                await apply_events(cur, schema, events)
                await cur.execute(
                    _update_sql(schema), (CHECKPOINT_NAME, decoded.last_position, caught_up_at)
                )
            return AppliedBatch(len(events), decoded.last_position)
    except _DETERMINISTIC as exc:
        raise PoisonBatch(f"{type(exc).__name__}: {exc}") from exc
    except _TRANSIENT as exc:
        raise ProjectionUnavailable(f"applying a batch to {schema!r} failed: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SkippedEvent:
    """An event a projection could not apply, recorded in ``projection_skips``."""

    position: int
    type: str
    error: str


@cache
def _skip_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (position, type, error, occurred_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (position) DO NOTHING"
    ).format(sql.Identifier(schema, "projection_skips"))


async def apply_or_skip(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    records: Sequence[RecordedEvent],
    *,
    expected_checkpoint: int | None = None,
    opener: Opener | None = None,
    caught_up_at: datetime | None = None,
    on_skip: Callable[[SkippedEvent], None] | None = None,
) -> AppliedBatch:
    """:func:`apply_records`, and when the batch holds an event that cannot be applied
    (:class:`PoisonBatch`), the batch again one event at a time: each event that cannot be
    applied is recorded in ``projection_skips`` (its position, type and error) in the
    transaction that moves the checkpoint past it, and ``on_skip`` is told. A projection never
    stops at such an event, and a rebuild meeting it records the same row."""
    try:
        return await apply_records(
            conn,
            schema,
            records,
            expected_checkpoint=expected_checkpoint,
            opener=opener,
            caught_up_at=caught_up_at,
        )
    except PoisonBatch:
        pass
    applied = 0
    checkpoint = expected_checkpoint
    for record in sorted(records, key=lambda r: r.position):
        try:
            result = await apply_records(
                conn, schema, [record], expected_checkpoint=checkpoint, opener=opener
            )
        except PoisonBatch as poison:
            skipped = await _skip(conn, schema, record, poison.error, checkpoint)
            if skipped is not None and on_skip is not None:
                on_skip(skipped)
            result = AppliedBatch(0, max(record.position, checkpoint or 0))
        applied += result.applied
        checkpoint = result.checkpoint
    assert checkpoint is not None or not records
    return AppliedBatch(applied, checkpoint if checkpoint is not None else 0)


async def _skip(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    record: RecordedEvent,
    error: str,
    expected_checkpoint: int | None,
) -> SkippedEvent | None:
    """Record ``record`` as skipped and move the checkpoint to it (None: it was at or below the
    checkpoint already)."""
    decoded = decode_records([record])
    event = decoded.events[0][1] if decoded.events else None
    tag = event.__struct_config__.tag if event is not None else "unknown"
    kind = tag if isinstance(tag, str) else "unknown"
    occurred_at = event.occurred_at if event is not None else None
    try:
        async with conn.transaction(), conn.cursor() as cur:
            current = await _position(cur, schema, lock=True)
            if expected_checkpoint is not None and current != expected_checkpoint:
                raise CheckpointMoved(expected_checkpoint, current)
            if record.position <= current:
                return None
            await cur.execute(_skip_sql(schema), (record.position, kind, error[:2000], occurred_at))
            await cur.execute(_update_sql(schema), (CHECKPOINT_NAME, record.position, None))
    except _TRANSIENT as exc:
        raise ProjectionUnavailable(
            f"recording a skipped event in {schema!r} failed: {exc}"
        ) from exc
    return SkippedEvent(record.position, kind, error)


async def mark_caught_up(
    conn: psycopg.AsyncConnection[Any], schema: str, position: int, when: datetime
) -> None:
    """Record that every event appended before ``when`` is at or below ``position``, the
    checkpoint (nothing changes when the checkpoint has moved or already says later)."""
    try:
        await conn.execute(_caught_up_sql(schema), (when, CHECKPOINT_NAME, position, when))
    except _TRANSIENT as exc:
        raise ProjectionUnavailable(f"marking {schema!r} caught up failed: {exc}") from exc


async def wait_for_position(conninfo: str, schema: str, position: int, timeout: float) -> None:  # noqa: ASYNC109
    """Return once ``schema``'s checkpoint reaches ``position``; raise ``TimeoutError`` if it
    has not within ``timeout`` seconds. A schema not created yet counts as position 0."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = 0
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            while True:
                try:
                    current = await read_checkpoint(conn, schema)
                except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                    current = 0
                if current >= position:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(POLL_INTERVAL, remaining))
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"reading the checkpoint of {schema!r} failed: {exc}") from exc
    raise TimeoutError(f"{schema!r} reached position {current}, not {position}, in {timeout}s")
