"""Comparing the read tables of two schemas row for row.

Used to check that a live projection equals a rebuild from the log (they must, since every value
comes from the events), by tests and by operators after a restore. Rows are matched by primary
key: a key present on one side only is reported as such, a key on both sides with different
values is reported column by column. Only the projector's own wall-clock times
(``projection_checkpoints.updated_at`` and ``caught_up_at``) are ignored.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from projections.errors import ProjectionUnavailable, RebuildError
from projections.schema import PROJECTION_TABLES

__all__ = ["IGNORED_COLUMNS", "compare_schemas"]

IGNORED_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("projection_checkpoints", "updated_at"), ("projection_checkpoints", "caught_up_at")}
)
"""``(table, column)`` pairs not compared."""

_COLUMNS = """
    SELECT column_name FROM information_schema.columns
    WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position
"""
_KEY = """
    SELECT a.attname FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
    WHERE i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) AND i.indisprimary
    ORDER BY array_position(i.indkey, a.attnum)
"""


async def _names(conn: psycopg.AsyncConnection[Any], query: str, *params: str) -> list[str]:
    cur = await conn.execute(query.encode(), params)
    return [str(row[0]) for row in await cur.fetchall()]


async def _only_in(
    conn: psycopg.AsyncConnection[Any], table: str, columns: list[str], first: str, second: str
) -> list[tuple[Any, ...]]:
    """Rows of ``first.table`` missing from ``second.table`` (as multisets), sorted."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    query = sql.SQL(
        "SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b} ORDER BY {order}"
    ).format(
        cols=cols,
        a=sql.Identifier(first, table),
        b=sql.Identifier(second, table),
        order=sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(columns))),
    )
    cur = await conn.execute(query)
    return list(await cur.fetchall())


def _describe(columns: list[str], row: tuple[Any, ...]) -> str:
    return ", ".join(f"{c}={v!r}" for c, v in zip(columns, row, strict=True))


async def _compare_table(
    conn: psycopg.AsyncConnection[Any], table: str, a: str, b: str
) -> list[str]:
    columns_a = await _names(conn, _COLUMNS, a, table)
    columns_b = await _names(conn, _COLUMNS, b, table)
    if not columns_a or not columns_b:
        missing = a if not columns_a else b
        return [] if columns_a == columns_b else [f"{table}: no such table in {missing}"]
    if columns_a != columns_b:
        return [f"{table}: columns differ: {a} has {columns_a}, {b} has {columns_b}"]
    columns = [c for c in columns_a if (table, c) not in IGNORED_COLUMNS]
    key = await _names(conn, _KEY, a, table) or columns
    at = [columns.index(k) for k in key]
    rows_a = {tuple(r[i] for i in at): r for r in await _only_in(conn, table, columns, a, b)}
    rows_b = {tuple(r[i] for i in at): r for r in await _only_in(conn, table, columns, b, a)}
    differences: list[str] = []
    for k, row in rows_a.items():
        other = rows_b.get(k)
        if other is None:
            differences.append(f"{table}: only in {a}: {_describe(columns, row)}")
            continue
        changed = [
            f"{c}: {a}={x!r} {b}={y!r}"
            for c, x, y in zip(columns, row, other, strict=True)
            if x != y
        ]
        differences.append(f"{table} {_describe(key, k)}: {'; '.join(changed)}")
    differences.extend(
        f"{table}: only in {b}: {_describe(columns, row)}"
        for k, row in rows_b.items()
        if k not in rows_a
    )
    return differences


async def _versions(conn: psycopg.AsyncConnection[Any], schema: str) -> set[int]:
    cur = await conn.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text))", (schema,)
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return set()
    cur = await conn.execute(
        sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, "schema_migrations"))
    )
    return {int(str(r[0])) for r in await cur.fetchall()}


async def compare_schemas(conninfo: str, a: str, b: str) -> list[str]:
    """Every difference between the read tables of schemas ``a`` and ``b``, one line per row
    (and one per migration applied to one side only); an empty list when they are equal."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        async with conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            differences: list[str] = []
            for table in PROJECTION_TABLES:
                differences.extend(await _compare_table(conn, table, a, b))
            versions = [await _versions(conn, a), await _versions(conn, b)]
            for version in sorted(versions[0] ^ versions[1]):
                side = a if version in versions[0] else b
                differences.append(f"schema_migrations: version {version} only in {side}")
            return differences
    except psycopg.OperationalError as exc:
        raise ProjectionUnavailable(f"comparing {a!r} and {b!r} failed: {exc}") from exc
    except psycopg.Error as exc:
        raise RebuildError(f"comparing {a!r} and {b!r} failed: {exc}") from exc
