"""Rebuilding the read tables from the log, and swapping them in while the service runs.

:func:`rebuild_into` replays every event of the log into fresh tables of a schema of its own (a
reader task streams the log ahead while batches are written); nothing is swapped.

:func:`rebuild_and_swap` (and :func:`rebuild`, which returns just the count) rebuilds the live
schema ``S`` while the service keeps writing to the log and the live projector keeps projecting
into ``S``. The protocol:

1. **Replay.** Under the session advisory lock ``rebuild:S`` (one rebuild per schema), create
   ``S_rebuild`` fresh (its migrations) and replay the log up to its head into it, in large
   batches (:data:`REBUILD_BATCH`). Nothing of ``S`` is locked meanwhile.
2. **Catch up.** Replay from the rebuilt checkpoint ``R`` to the log's new head, round after
   round, until fewer than :data:`SWAP_LAG` events are left (or a round stops gaining on the
   writers), so that the swap holds the projector only briefly.
3. **Swap**, in one transaction (:func:`swap_schemas`):

   a. ``pg_advisory_xact_lock(migrate:S)``: no migration of ``S`` runs meanwhile;
   b. ``LOCK TABLE S.projection_checkpoints IN EXCLUSIVE MODE``. Every projector batch begins,
      inside its transaction, with ``SELECT ... FOR UPDATE`` of its checkpoint row in that table
      (:func:`projections.checkpoint.apply_records`) and only then writes the read tables and
      moves the checkpoint. A batch in flight holds a ROW SHARE lock on the table, so the LOCK
      waits for it to commit; any later batch blocks on its first statement until the swap
      commits. Readers (ACCESS SHARE) are not blocked.
   c. read the live checkpoint ``L``: no projector can move it any more. If ``R < L``, replay
      ``(R, L]`` into ``S_rebuild`` inside this very transaction, so ``R = L``. (``R > L`` when
      the projector lags behind the rebuild or is stopped: the rebuilt tables are simply ahead.)
   d. move every table of ``S`` that is not a projection (not in
      :data:`projections.schema.PROJECTION_TABLES`, nor ``schema_migrations``) into
      ``S_rebuild``, in place of the empty copy its migrations made there: those rows are not
      in the log and could never be rebuilt. The table itself moves (``ALTER TABLE ... SET
      SCHEMA``) with its indexes, constraints and owned sequences;
   e. rename ``S`` to ``S_old`` and ``S_rebuild`` to ``S``; commit.

   Statements see the old tables or the new ones, never a half-built schema.
4. **Hand-over.** The projector's blocked batch gets its row lock on the *rebuilt* checkpoint
   table (PostgreSQL looks the name up again once the lock it waited for is granted) and reads
   ``R``. When ``R = L``, the checkpoint it expected, it applies ``L+1...`` to the rebuilt
   tables and carries on: no event missed, none applied twice, not even a resubscription.
   When ``R != L``, it raises :class:`CheckpointMoved` inside the batch, which applies nothing:
   the projector naks the batch and resubscribes at ``R + 1``. Either way every event lands
   exactly once.
5. ``S_old`` is dropped after the commit, where waiting for readers still on it blocks no one.

A swap that cannot get its locks within :data:`SWAP_LOCK_TIMEOUT` (a long transaction on a
carried table, say) is rolled back, so that the service never queues behind it for long, and
retried after another catch-up round, up to :data:`SWAP_ATTEMPTS` times. A failed rebuild drops
``S_rebuild`` and leaves ``S`` as it was; one that was killed leaves ``S_rebuild`` (or
``S_old``) behind, and the next rebuild drops it first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import sql

from eventstore import EventLog, EventStoreError, RecordedEvent
from projections.batch import Opener
from projections.checkpoint import apply_or_skip, read_checkpoint
from projections.compare import compare_schemas
from projections.errors import ProjectionError, ProjectionUnavailable, RebuildError
from projections.schema import (
    PROJECTION_TABLES,
    check_schema_name,
    lock_holder,
    lock_key,
    migrate,
)

__all__ = [
    "REBUILD_BATCH",
    "RebuildResult",
    "compare_schemas",
    "rebuild",
    "rebuild_and_swap",
    "rebuild_into",
    "swap_schemas",
]

logger = structlog.get_logger(__name__)

REBUILD_BATCH = 5000
"""Events per transaction during a rebuild."""
SWAP_LAG = 500
"""Catch-up rounds go on while more events than this are left; the rest is replayed in the
swap's transaction, while the projector waits."""
CATCH_UP_ROUNDS = 20
"""At most this many catch-up rounds before the swap."""
SWAP_LOCK_TIMEOUT = 5.0
"""Seconds the swap waits for a lock before it rolls back and tries again."""
SWAP_ATTEMPTS = 5
"""Swaps tried before the rebuild gives up."""
DROP_LOCK_TIMEOUT = 30.0
"""Seconds the drop of the former live schema waits for readers still on it."""
_READ_AHEAD = 4  # batches read from the log ahead of the one being written

Progress = Callable[[int, int], None]
"""``progress(position, target)``: the rebuilt tables' position and the position they are
heading for (the log's head, which moves while the service writes). The last call has
``position == target``."""

_KEEP = frozenset({*PROJECTION_TABLES, "schema_migrations"})
_TABLES = """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname
"""
_FOREIGN_KEYS = """
    SELECT con.conname, src.relname, dst.relname
    FROM pg_constraint con
    JOIN pg_class src ON src.oid = con.conrelid
    JOIN pg_class dst ON dst.oid = con.confrelid
    JOIN pg_namespace n ON n.oid = src.relnamespace
    WHERE con.contype = 'f' AND n.nspname = %s AND dst.relnamespace = src.relnamespace
"""


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What :func:`rebuild_and_swap` did."""

    applied: int
    """Events applied to the rebuilt tables (unknown events are passed, not applied)."""
    position: int
    """The checkpoint of the tables swapped in."""
    live_position: int | None
    """The live checkpoint when the swap locked it; None when there were no live tables."""
    catch_up_rounds: int
    """Replays between the first one and the swap."""
    swap_attempts: int
    """Swap transactions tried (more than one when a lock was not granted in time)."""
    held: float
    """Seconds the swap held the projector's checkpoint table: how long a batch could wait."""
    carried: tuple[str, ...]
    """Tables that are not projections, moved from the old live schema into the new one."""


@dataclass(frozen=True, slots=True)
class _Swapped:
    position: int
    live_position: int | None
    applied: int
    held: float
    carried: tuple[str, ...]


async def _connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


async def _head(log: EventLog) -> int:
    try:
        return await log.last_position()
    except EventStoreError as exc:
        raise RebuildError(f"cannot reach the event log: {exc}") from exc


async def _read_batches(
    log: EventLog,
    queue: asyncio.Queue[list[RecordedEvent] | BaseException | None],
    batch_size: int,
    first: int,
    last: int,
) -> None:
    """Put positions ``first..last`` of the log on ``queue`` in batches, then None (or the
    error that stopped the read)."""
    try:
        batch: list[RecordedEvent] = []
        async for record in log.read(from_position=first, to_position=last):
            batch.append(record)
            if len(batch) >= batch_size:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)
        await queue.put(None)
    except Exception as exc:  # handed to the writer, which raises it
        await queue.put(exc)


async def _replay(
    conn: psycopg.AsyncConnection[Any],
    log: EventLog,
    schema: str,
    checkpoint: int,
    last: int,
    *,
    batch_size: int,
    progress: Progress | None,
    opener: Opener | None = None,
) -> tuple[int, int]:
    """Apply positions ``checkpoint + 1..last`` of the log to ``schema``, one transaction per
    batch (savepoints inside an open transaction); returns (events applied, new checkpoint)."""
    if last <= checkpoint:
        return 0, checkpoint
    queue: asyncio.Queue[list[RecordedEvent] | BaseException | None] = asyncio.Queue(_READ_AHEAD)
    reader = asyncio.create_task(_read_batches(log, queue, batch_size, checkpoint + 1, last))
    applied = 0
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise RebuildError(f"reading the log failed: {item}") from item
            result = await apply_or_skip(
                conn, schema, item, expected_checkpoint=checkpoint, opener=opener
            )
            applied += result.applied
            checkpoint = result.checkpoint
            if progress is not None:
                progress(checkpoint, max(last, checkpoint))
        await reader
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError):
            await reader
    return applied, checkpoint


async def _create(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    await migrate(conn, schema)


async def rebuild_into(
    log: EventLog,
    conninfo: str,
    target_schema: str,
    *,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
    opener: Opener | None = None,
) -> int:
    """Drop ``target_schema`` if it exists, create it fresh and replay the whole log (up to its
    head at the time of the call) into it; returns the number of events applied. The target is
    not swapped in anywhere. ``opener`` opens sealed personal fields (see :class:`Opener`)."""
    check_schema_name(target_schema)
    last = await _head(log)
    conn = await _connect(conninfo)
    try:
        # a crash mid-rebuild loses nothing that matters: the rebuild starts over
        await conn.execute("SET synchronous_commit = off")
        await _create(conn, target_schema)
        applied, _ = await _replay(
            conn,
            log,
            target_schema,
            0,
            last,
            batch_size=batch_size,
            progress=progress,
            opener=opener,
        )
    except psycopg.Error as exc:
        raise RebuildError(f"rebuilding into {target_schema!r} failed: {exc}") from exc
    finally:
        await conn.close()
    logger.info("rebuild_done", schema=target_schema, applied=applied)
    return applied


async def _schema_exists(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    return await cur.fetchone() is not None


async def _has_checkpoints(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    cur = await conn.execute(
        "SELECT to_regclass(format('%%I.projection_checkpoints', %s::text))", (schema,)
    )
    row = await cur.fetchone()
    return row is not None and row[0] is not None


async def _carry_over(
    conn: psycopg.AsyncConnection[Any], live: str, rebuilt: str
) -> tuple[str, ...]:
    """Move the tables of ``live`` that are not projections into ``rebuilt``, replacing the
    copies its migrations created; returns their names."""
    cur = await conn.execute(_TABLES.encode(), (live,))
    carried = tuple(str(r[0]) for r in await cur.fetchall() if str(r[0]) not in _KEEP)
    if not carried:
        return ()
    cur = await conn.execute(_FOREIGN_KEYS.encode(), (live,))
    for name, source, target in await cur.fetchall():
        if source in carried and target not in carried:
            raise RebuildError(
                f"{live}.{source} refers to the projection table {target} ({name}): "
                "a table that is not rebuilt cannot depend on one that is"
            )
    cur = await conn.execute(_TABLES.encode(), (rebuilt,))
    copies = [str(r[0]) for r in await cur.fetchall() if str(r[0]) in carried]
    if copies:
        await conn.execute(
            sql.SQL("DROP TABLE {}").format(
                sql.SQL(", ").join(sql.Identifier(rebuilt, t) for t in copies)
            )
        )
    for table in carried:
        await conn.execute(
            sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                sql.Identifier(live, table), sql.Identifier(rebuilt)
            )
        )
    return carried


def _ms(seconds: float) -> sql.Literal:
    return sql.Literal(f"{max(1, round(seconds * 1000))}ms")


async def _swap_once(
    conn: psycopg.AsyncConnection[Any],
    live: str,
    rebuilt: str,
    *,
    log: EventLog | None,
    batch_size: int,
    progress: Progress | None,
    lock_timeout: float | None,
    opener: Opener | None = None,
) -> _Swapped:
    """Steps 3 and 5 of the protocol (module docstring)."""
    old = check_schema_name(f"{live}_old")
    held_since: float | None = None
    applied = 0
    live_position: int | None = None
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")
        if lock_timeout is not None:
            await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(_ms(lock_timeout)))
        await conn.execute(
            sql.SQL("SELECT pg_advisory_xact_lock({})").format(lock_key("migrate", live))
        )
        position = await read_checkpoint(conn, rebuilt)
        if await _has_checkpoints(conn, live):
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.Identifier(live, "projection_checkpoints")
                )
            )
            held_since = time.monotonic()
            live_position = await read_checkpoint(conn, live)
            if log is not None and live_position > position:
                applied, position = await _replay(
                    conn,
                    log,
                    rebuilt,
                    position,
                    live_position,
                    batch_size=batch_size,
                    progress=progress,
                    opener=opener,
                )
        carried = await _carry_over(conn, live, rebuilt)
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(old)))
        if await _schema_exists(conn, live):
            await conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    sql.Identifier(live), sql.Identifier(old)
                )
            )
        await conn.execute(
            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                sql.Identifier(rebuilt), sql.Identifier(live)
            )
        )
    held = 0.0 if held_since is None else time.monotonic() - held_since
    await _drop_quietly(conn, old)
    logger.debug(  # the caller reports it (info would land in the middle of a progress bar)
        "rebuild_swapped",
        schema=live,
        position=position,
        live_position=live_position,
        applied_in_swap=applied,
        held_ms=round(held * 1000, 1),
        carried=list(carried),
    )
    return _Swapped(position, live_position, applied, held, carried)


async def _drop_quietly(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Drop ``schema`` if it exists; one still in use after :data:`DROP_LOCK_TIMEOUT` is left
    for the next rebuild."""
    try:
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(_ms(DROP_LOCK_TIMEOUT))
            )
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
    except psycopg.Error as exc:
        logger.warning("rebuild_schema_left", schema=schema, error=str(exc))


async def swap_schemas(
    conn: psycopg.AsyncConnection[Any],
    live: str,
    rebuilt: str,
    *,
    log: EventLog | None = None,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
    lock_timeout: float | None = None,
    opener: Opener | None = None,
) -> int:
    """In one transaction, put ``rebuilt`` in the place of ``live`` (the former live schema is
    renamed ``<live>_old``, then dropped), carrying over the tables of ``live`` that are not
    projections; returns the checkpoint swapped in. Waits for a running projector's batch and
    holds its next one until the commit. With ``log``, the rebuilt tables are first caught up
    to the live checkpoint inside the transaction, so that the projector carries on without a
    resubscription. ``lock_timeout`` (seconds) bounds each lock wait (else no bound)."""
    check_schema_name(live)
    check_schema_name(rebuilt)
    try:
        swapped = await _swap_once(
            conn,
            live,
            rebuilt,
            log=log,
            batch_size=batch_size,
            progress=progress,
            lock_timeout=lock_timeout,
            opener=opener,
        )
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"swapping {rebuilt!r} in for {live!r} failed: {exc}") from exc
    except psycopg.Error as exc:
        raise RebuildError(f"swapping {rebuilt!r} in for {live!r} failed: {exc}") from exc
    return swapped.position


async def _catch_up(
    conn: psycopg.AsyncConnection[Any],
    log: EventLog,
    schema: str,
    checkpoint: int,
    *,
    batch_size: int,
    progress: Progress | None,
    opener: Opener | None = None,
) -> tuple[int, int, int]:
    """Step 2: replay to the moving head until little is left; (applied, checkpoint, rounds)."""
    applied = rounds = 0
    previous_lag: int | None = None
    while rounds < CATCH_UP_ROUNDS:
        head = await _head(log)
        lag = head - checkpoint
        if lag <= SWAP_LAG or (previous_lag is not None and lag >= previous_lag):
            break  # close enough, or the writers are as fast as the replay
        count, reached = await _replay(
            conn,
            log,
            schema,
            checkpoint,
            head,
            batch_size=batch_size,
            progress=progress,
            opener=opener,
        )
        rounds += 1
        applied += count
        if reached == checkpoint:
            break  # the log's reads end before its head
        previous_lag, checkpoint = lag, reached
    return applied, checkpoint, rounds


async def _take_rebuild_lock(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    cur = await conn.execute(
        sql.SQL("SELECT pg_try_advisory_lock({})").format(lock_key("rebuild", schema))
    )
    row = await cur.fetchone()
    if row is None or not row[0]:
        holder = await lock_holder(conn, "rebuild", schema)
        raise RebuildError(
            f"a rebuild of {schema!r} is already running (PostgreSQL backend {holder})"
        )


async def rebuild_and_swap(
    log: EventLog,
    conninfo: str,
    schema: str,
    *,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
    opener: Opener | None = None,
) -> RebuildResult:
    """Rebuild ``schema`` beside the live one while the service runs, catch up to the log's
    head and swap it in (the protocol in the module docstring). Raises :class:`RebuildError`
    when a rebuild of the schema is already running or the swap cannot get its locks, and
    leaves the live schema as it was on any failure. ``opener`` opens sealed personal fields
    (see :class:`~projections.batch.Opener`): give it the one the live projector has."""
    check_schema_name(schema)
    rebuilt = check_schema_name(f"{schema}_rebuild")
    check_schema_name(f"{schema}_old")
    conn = await _connect(conninfo)
    try:
        await _take_rebuild_lock(conn, schema)
        # a crash mid-rebuild loses nothing that matters: the rebuild starts over
        await conn.execute("SET synchronous_commit = off")
        await _drop_quietly(conn, f"{schema}_old")
        await _create(conn, rebuilt)
        head = await _head(log)
        applied, checkpoint = await _replay(
            conn, log, rebuilt, 0, head, batch_size=batch_size, progress=progress, opener=opener
        )
        rounds = 0
        attempt = 0
        while True:
            attempt += 1
            count, checkpoint, more = await _catch_up(
                conn,
                log,
                rebuilt,
                checkpoint,
                batch_size=batch_size,
                progress=progress,
                opener=opener,
            )
            applied += count
            rounds += more
            try:
                swapped = await _swap_once(
                    conn,
                    schema,
                    rebuilt,
                    log=log,
                    batch_size=batch_size,
                    progress=progress,
                    lock_timeout=SWAP_LOCK_TIMEOUT,
                    opener=opener,
                )
            except psycopg.errors.LockNotAvailable as exc:
                if attempt >= SWAP_ATTEMPTS:
                    raise RebuildError(
                        f"swapping {schema!r} never got its locks"
                        f" ({SWAP_ATTEMPTS} waits of {SWAP_LOCK_TIMEOUT}s): {exc}"
                    ) from exc
                logger.warning("rebuild_swap_retrying", schema=schema, error=str(exc))
                checkpoint = await read_checkpoint(conn, rebuilt)
                continue
            break
        applied += swapped.applied
    except psycopg.OperationalError as exc:
        await _drop_after_failure(conn, rebuilt)
        raise ProjectionUnavailable(f"rebuilding {schema!r} failed: {exc}") from exc
    except psycopg.Error as exc:
        await _drop_after_failure(conn, rebuilt)
        raise RebuildError(f"rebuilding {schema!r} failed: {exc}") from exc
    except ProjectionError:
        await _drop_after_failure(conn, rebuilt)
        raise
    finally:
        await conn.close()
    if progress is not None:
        progress(swapped.position, swapped.position)
    return RebuildResult(
        applied=applied,
        position=swapped.position,
        live_position=swapped.live_position,
        catch_up_rounds=rounds,
        swap_attempts=attempt,
        held=swapped.held,
        carried=swapped.carried,
    )


async def _drop_after_failure(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    with suppress(psycopg.Error):
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


async def rebuild(
    log: EventLog,
    conninfo: str,
    schema: str,
    *,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
    opener: Opener | None = None,
) -> int:
    """:func:`rebuild_and_swap`, returning the number of events applied."""
    result = await rebuild_and_swap(
        log, conninfo, schema, progress=progress, batch_size=batch_size, opener=opener
    )
    return result.applied
