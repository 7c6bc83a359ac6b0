"""Where the read tables of a schema stand: their checkpoints, whether a projector holds the
schema's lock, and whether a rebuild of it is running and how far it got.

Only reads: the advisory locks are looked up in ``pg_locks``, never taken, so asking never
gets in a projector's way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from projections.errors import ProjectionUnavailable
from projections.schema import check_schema_name, lock_holder

__all__ = ["CheckpointStatus", "LockHolder", "SchemaStatus", "SkipStatus", "schema_status"]


@dataclass(frozen=True, slots=True)
class CheckpointStatus:
    """One checkpoint row: the position its tables reflect, and when it last moved."""

    name: str
    position: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class LockHolder:
    """The PostgreSQL session holding an advisory lock."""

    pid: int
    client: str | None
    """``address:port`` of the session (None when PostgreSQL does not say)."""
    application: str | None
    connected_at: datetime | None


@dataclass(frozen=True, slots=True)
class SkipStatus:
    """Events the read tables could not take (``projection_skips``): how many, and the last."""

    count: int
    last: tuple[tuple[int, str, str], ...]
    """(position, type, error) of the most recent ones, newest first."""


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What :func:`schema_status` found."""

    schema: str
    checked_at: datetime
    """The database's clock when it looked (to say how long ago a checkpoint moved)."""
    checkpoints: tuple[CheckpointStatus, ...]
    """Empty when the schema has no read tables."""
    projector: LockHolder | None
    """The session projecting into the schema (holding its lock), if any."""
    rebuild: LockHolder | None
    """The session rebuilding the schema, if any."""
    rebuild_position: int | None
    """How far the rebuilt tables got, while a rebuild runs."""
    skipped: SkipStatus = SkipStatus(0, ())
    """Events the tables passed over because they could not be applied."""


_ACTIVITY = """
    SELECT client_addr::text, client_port, application_name, backend_start
    FROM pg_stat_activity WHERE pid = %s
"""


async def _holder(
    conn: psycopg.AsyncConnection[Any], purpose: str, schema: str
) -> LockHolder | None:
    pid = await lock_holder(conn, purpose, schema)
    if pid is None:
        return None
    cur = await conn.execute(_ACTIVITY.encode(), (pid,))
    row = await cur.fetchone()
    if row is None:
        return LockHolder(pid, None, None, None)
    address, port, application, started = row
    client = None if address is None else f"{address.split('/')[0]}:{port}"
    return LockHolder(pid, client, application or None, started)


async def _checkpoints(
    conn: psycopg.AsyncConnection[Any], schema: str
) -> tuple[CheckpointStatus, ...]:
    cur = await conn.execute(
        "SELECT to_regclass(format('%%I.projection_checkpoints', %s::text))", (schema,)
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return ()
    try:
        cur = await conn.execute(
            sql.SQL("SELECT name, position, updated_at FROM {} ORDER BY name").format(
                sql.Identifier(schema, "projection_checkpoints")
            )
        )
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return ()  # dropped or renamed since: a rebuild just swapped or gave up
    return tuple(
        CheckpointStatus(str(name), int(position), updated_at)
        for name, position, updated_at in await cur.fetchall()
    )


async def schema_status(conninfo: str, schema: str) -> SchemaStatus:
    """The checkpoints of ``schema``, its projector and its rebuild, if any."""
    check_schema_name(schema)
    rebuilt = f"{schema}_rebuild"
    try:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            cur = await conn.execute("SELECT now()")
            row = await cur.fetchone()
            assert row is not None
            checked_at: datetime = row[0]
            checkpoints = await _checkpoints(conn, schema)
            projector = await _holder(conn, "project", schema)
            rebuild = await _holder(conn, "rebuild", schema)
            rebuild_position = None
            if rebuild is not None:
                rows = await _checkpoints(conn, rebuilt)
                rebuild_position = rows[0].position if rows else 0
            skipped = await _skipped(conn, schema) if checkpoints else SkipStatus(0, ())
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"reading the status of {schema!r} failed: {exc}") from exc
    return SchemaStatus(
        schema, checked_at, checkpoints, projector, rebuild, rebuild_position, skipped
    )


async def _skipped(conn: psycopg.AsyncConnection[Any], schema: str, shown: int = 5) -> SkipStatus:
    table = sql.Identifier(schema, "projection_skips")
    try:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        row = await cur.fetchone()
        cur = await conn.execute(
            sql.SQL("SELECT position, type, error FROM {} ORDER BY position DESC LIMIT %s").format(
                table
            ),
            (shown,),
        )
        last = tuple((int(p), str(t), str(e)) for p, t, e in await cur.fetchall())
    except psycopg.errors.UndefinedTable:
        return SkipStatus(0, ())
    return SkipStatus(int(row[0]) if row else 0, last)
