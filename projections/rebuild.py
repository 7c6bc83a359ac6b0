"""Rebuilding the read tables from the whole log, and swapping them in for the live ones.

:func:`rebuild_into` replays every event of the log into fresh tables of a schema of its own (a
reader task streams the log ahead while batches are written). :func:`rebuild` does that into
``<schema>_rebuild`` and then, in one transaction, renames the live schema to ``<schema>_old``,
the rebuilt one to ``<schema>`` and drops the old one. The swap first locks the live checkpoint
table, so it waits for a running projector's batch to commit; the projector's next batch finds
the rebuilt checkpoint, sees it moved and resubscribes from there, so events appended during or
after the rebuild are neither missed nor applied twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import psycopg
import structlog
from psycopg import sql

from eventstore import EventLog, EventStoreError, RecordedEvent
from projections.checkpoint import apply_records
from projections.compare import compare_schemas
from projections.errors import ProjectionError, ProjectionUnavailable, RebuildError
from projections.schema import check_schema_name, lock_key, migrate

__all__ = ["REBUILD_BATCH", "compare_schemas", "rebuild", "rebuild_into", "swap_schemas"]

logger = structlog.get_logger(__name__)

REBUILD_BATCH = 5000
"""Events per transaction during a rebuild."""
_READ_AHEAD = 4  # batches read from the log ahead of the one being written

Progress = Callable[[int, int], None]


async def _connect(conninfo: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


async def _read_batches(
    log: EventLog,
    queue: asyncio.Queue[list[RecordedEvent] | BaseException | None],
    batch_size: int,
) -> None:
    """Put the whole log on ``queue`` in batches, then None (or the error that stopped it)."""
    try:
        batch: list[RecordedEvent] = []
        async for record in log.read():
            batch.append(record)
            if len(batch) >= batch_size:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)
        await queue.put(None)
    except Exception as exc:  # handed to the writer, which raises it
        await queue.put(exc)


async def rebuild_into(
    log: EventLog,
    conninfo: str,
    target_schema: str,
    *,
    progress: Progress | None = None,
    batch_size: int = REBUILD_BATCH,
) -> int:
    """Drop ``target_schema`` if it exists, create it fresh and replay the whole log into it;
    returns the number of events applied. ``progress(position, last_position)`` is called after
    each batch. The target is not swapped in anywhere."""
    check_schema_name(target_schema)
    try:
        last = await log.last_position()
    except EventStoreError as exc:
        raise RebuildError(f"cannot reach the event log: {exc}") from exc
    conn = await _connect(conninfo)
    queue: asyncio.Queue[list[RecordedEvent] | BaseException | None] = asyncio.Queue(_READ_AHEAD)
    reader = asyncio.create_task(_read_batches(log, queue, batch_size))
    applied = 0
    try:
        # a crash mid-rebuild loses nothing that matters: the rebuild starts over
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(target_schema))
        )
        await migrate(conn, target_schema)
        checkpoint = 0
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise RebuildError(f"reading the log failed: {item}") from item
            result = await apply_records(conn, target_schema, item, expected_checkpoint=checkpoint)
            applied += result.applied
            checkpoint = result.checkpoint
            if progress is not None:
                progress(checkpoint, max(last, checkpoint))
        await reader
    except psycopg.Error as exc:
        raise RebuildError(f"rebuilding into {target_schema!r} failed: {exc}") from exc
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError):
            await reader
        await conn.close()
    logger.info("rebuild_done", schema=target_schema, applied=applied)
    return applied


async def swap_schemas(conn: psycopg.AsyncConnection[Any], live: str, rebuilt: str) -> None:
    """In one transaction, put ``rebuilt`` in the place of ``live`` and drop the former live
    schema (renamed ``<live>_old`` on the way). Waits for a running projector's batch."""
    old = check_schema_name(f"{live}_old")
    try:
        async with conn.transaction():
            await conn.execute(
                sql.SQL("SELECT pg_advisory_xact_lock({})").format(lock_key("migrate", live))
            )
            cur = await conn.execute(
                "SELECT to_regclass(format('%%I.projection_checkpoints', %s::text))", (live,)
            )
            row = await cur.fetchone()
            if row is not None and row[0] is not None:
                await conn.execute(
                    sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                        sql.Identifier(live, "projection_checkpoints")
                    )
                )
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(old))
            )
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (live,))
            if await cur.fetchone() is not None:
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
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(old))
            )
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"swapping {rebuilt!r} in for {live!r} failed: {exc}") from exc
    except psycopg.Error as exc:
        raise RebuildError(f"swapping {rebuilt!r} in for {live!r} failed: {exc}") from exc


async def rebuild(
    log: EventLog,
    conninfo: str,
    schema: str,
    *,
    progress: Progress | None = None,
) -> int:
    """Replay the whole log into ``<schema>_rebuild``, then swap it in for ``schema`` in one
    transaction; returns the number of events applied. One rebuild per schema at a time (an
    advisory lock); a running projector carries on from the rebuilt checkpoint."""
    check_schema_name(schema)
    rebuilt = check_schema_name(f"{schema}_rebuild")
    check_schema_name(f"{schema}_old")
    conn = await _connect(conninfo)
    try:
        await conn.execute(
            sql.SQL("SELECT pg_advisory_lock({})").format(lock_key("rebuild", schema))
        )
        applied = await rebuild_into(log, conninfo, rebuilt, progress=progress)
        await swap_schemas(conn, schema, rebuilt)
    except psycopg.Error as exc:
        raise RebuildError(f"rebuilding {schema!r} failed: {exc}") from exc
    except ProjectionError:
        with suppress(psycopg.Error):
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(rebuilt))
            )
        raise
    finally:
        await conn.close()
    logger.info("rebuild_swapped", schema=schema, applied=applied)
    return applied
