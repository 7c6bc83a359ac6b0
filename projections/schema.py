"""The read tables' schema: numbered SQL migrations applied inside a named PostgreSQL schema.

Migrations are the files ``projections/sql/NNN_name.sql``, applied in order with
``search_path`` set to the target schema alone, so that the files never name a schema. Which ones
were applied is recorded in ``<schema>.schema_migrations``. :func:`migrate` runs in one
transaction under an advisory lock keyed by the schema name, so two processes starting at once
neither fail nor apply a migration twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import psycopg
import structlog
from psycopg import sql

from projections.errors import MigrationError, ProjectionUnavailable

__all__ = [
    "CHECKPOINT_NAME",
    "MAX_SCHEMA_NAME",
    "PROJECTION_TABLES",
    "Migration",
    "apply_migrations",
    "check_schema_name",
    "lock_holder",
    "lock_key",
    "migrate",
    "migrations",
]

log = structlog.get_logger(__name__)

CHECKPOINT_NAME = "read_models"
"""The one checkpoint row covering all read tables of a schema."""

PROJECTION_TABLES: tuple[str, ...] = (
    "devices",
    "messages",
    "inbox",
    "tenants",
    "projection_skips",
    "projection_checkpoints",
)
"""Every table whose rows are projected from the log (``schema_migrations`` is not one)."""

MAX_SCHEMA_NAME = 63
"""PostgreSQL silently truncates longer identifiers (in bytes); we refuse them instead."""

_LOCK_CLASS = 0x52505348  # "RPSH": first key of every advisory lock taken by projections
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("projections").joinpath("sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return tuple(found)


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if PostgreSQL can hold it unchanged, else raise ``ValueError``."""
    if not schema or len(schema.encode()) > MAX_SCHEMA_NAME or "\x00" in schema:
        raise ValueError(f"not a usable schema name: {schema!r}")
    if schema == "public" or schema.startswith("pg_"):
        raise ValueError(f"read tables never live in schema {schema!r}")
    return schema


def lock_key(purpose: str, schema: str) -> sql.Composed:
    """An advisory lock key pair: ``(class, hashtext(purpose:schema))``, as SQL arguments."""
    return sql.SQL("{}, hashtext({})").format(
        sql.Literal(_LOCK_CLASS), sql.Literal(f"{purpose}:{schema}")
    )


async def lock_holder(conn: psycopg.AsyncConnection[Any], purpose: str, schema: str) -> int | None:
    """The backend pid of the session holding the advisory lock ``lock_key(purpose, schema)``
    in this database, or None; looks at ``pg_locks`` and never takes the lock itself."""
    query = sql.SQL(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = {}::oid AND objid = hashtext({})::oid ORDER BY pid LIMIT 1"
    ).format(sql.Literal(_LOCK_CLASS), sql.Literal(f"{purpose}:{schema}"))
    cur = await conn.execute(query)
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def apply_migrations(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    available: Sequence[Migration],
    *,
    ledger: str,
    lock_purpose: str,
) -> list[Migration]:
    """Create ``schema`` and its ``ledger`` table if missing and apply the ``available``
    migrations the ledger has not recorded, in one transaction under an advisory lock (safe when
    several processes start at once), each with ``search_path`` set to ``schema`` alone.
    Returns what was applied; psycopg's errors pass through for the caller to name."""
    check_schema_name(schema)
    ident = sql.Identifier(schema)
    table = sql.Identifier(schema, ledger)
    applied_now: list[Migration] = []
    async with conn.transaction():
        await conn.execute(
            sql.SQL("SELECT pg_advisory_xact_lock({})").format(lock_key(lock_purpose, schema))
        )
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(table)
        )
        cur = await conn.execute(sql.SQL("SELECT version FROM {}").format(table))
        applied = {int(str(row[0])) for row in await cur.fetchall()}
        pending = [m for m in available if m.version not in applied]
        if not pending:
            return applied_now
        cur = await conn.execute("SELECT current_setting('search_path')")
        row = await cur.fetchone()
        saved_path = str(row[0]) if row else ""
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        for migration in pending:
            await conn.execute(migration.sql.encode())
            await conn.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(table),
                (migration.version, migration.name),
            )
            applied_now.append(migration)
        await conn.execute("SELECT set_config('search_path', %s, true)", (saved_path,))
    return applied_now


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create ``schema`` if missing and apply the migrations it has not seen, in one
    transaction. Safe when several processes call it at once. Raises :class:`MigrationError`
    when a migration fails, :class:`ProjectionUnavailable` when PostgreSQL cannot be reached."""
    try:
        done = await apply_migrations(
            conn, schema, migrations(), ledger="schema_migrations", lock_purpose="migrate"
        )
        for migration in done:
            log.info(
                "migration_applied", schema=schema, version=migration.version, name=migration.name
            )
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"migrating schema {schema!r} failed: {exc}") from exc
    except psycopg.Error as exc:
        raise MigrationError(f"migrating schema {schema!r} failed: {exc}") from exc
