"""The deduplication index as the read tables hold it: ``messages`` and the projector's checkpoint.

One query answers whether a notification was accepted (its ``messages`` row exists and is not a
mere drop) together with how far the tables reach (the checkpoint's position and when the
projector last saw the log's head), so that the caller can tell a trustworthy miss from one the
projector's lag might explain (:func:`relaypush.domain.dedup.needs_scan`).

The pool opens in the background, so a process using the index starts while PostgreSQL is down;
every lookup that cannot be answered raises
:class:`~relaypush.domain.dedup.IndexUnavailable`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from functools import cache
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from projections.schema import CHECKPOINT_NAME, check_schema_name
from relaypush.domain.dedup import NOTHING_INDEXED, IndexAnswer, IndexUnavailable

__all__ = ["PostgresDedupIndex", "open_dedup_index"]


@cache
def _lookup_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        SELECT (SELECT m.status <> 'dropped' FROM {messages} AS m
                WHERE m.tenant_id = %s AND m.client_id = %s AND m.message_id = %s),
               c.position, c.caught_up_at
        FROM {checkpoints} AS c WHERE c.name = %s
        """
    ).format(
        messages=sql.Identifier(schema, "messages"),
        checkpoints=sql.Identifier(schema, "projection_checkpoints"),
    )


class PostgresDedupIndex:
    """Looks notifications up in ``<schema>.messages``: one round trip per lookup."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, *, wait: float) -> None:
        self._pool = pool
        self._schema = check_schema_name(schema)
        self._wait = wait

    async def lookup(self, tenant_id: str, client_id: str, message_id: str) -> IndexAnswer:
        """What the index knows of (tenant, client, message id)."""
        params = (tenant_id, client_id, message_id, CHECKPOINT_NAME)
        try:
            async with self._pool.connection(timeout=self._wait) as conn:
                cur = await conn.execute(_lookup_sql(self._schema), params, prepare=True)
                row = await cur.fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return NOTHING_INDEXED  # not migrated yet: nothing projected
        except (psycopg.Error, PoolTimeout) as exc:
            raise IndexUnavailable(f"the deduplication index cannot answer: {exc}") from exc
        if row is None:
            return NOTHING_INDEXED
        accepted, position, caught_up_at = row
        return IndexAnswer(
            accepted=bool(accepted), position=int(position), caught_up_at=caught_up_at
        )


@contextlib.asynccontextmanager
async def open_dedup_index(
    database_url: str, schema: str, *, max_connections: int = 8, wait: float = 2.0
) -> AsyncIterator[PostgresDedupIndex]:
    """A pool-backed index, connecting in the background; closed on exit. ``wait`` bounds
    how long a lookup waits for a connection."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_connections,
        open=False,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=False)
    try:
        yield PostgresDedupIndex(pool, schema, wait=wait)
    finally:
        await pool.close()
