"""The deduplication index as the read tables hold it: ``messages`` and the projector's checkpoint.

One query answers whether notifications were accepted (their ``messages`` rows exist and are not
mere drops) together with how far the tables reach (the checkpoint's position and when the
projector last saw the log's head), so that the caller can tell a trustworthy miss from one the
projector's lag might explain (:func:`relaypush.domain.dedup.needs_scan`).

Lookups made while a query is under way wait for the next one, which answers all of them at once
(at most ``MAX_BATCH`` a query, at most ``FLUSHES`` queries at a time): an idle server answers a
lookup with one query of its own, a busy one amortises the round trip and the driver's work over
many pushes.

The pool opens in the background, so a process using the index starts while PostgreSQL is down;
every lookup that cannot be answered raises :class:`~relaypush.domain.dedup.IndexUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from functools import cache
from typing import Any, Final

import msgspec
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from projections.batch import recordset
from projections.schema import CHECKPOINT_NAME, check_schema_name
from relaypush.domain.dedup import NOTHING_INDEXED, IndexAnswer, IndexUnavailable

__all__ = ["FLUSHES", "MAX_BATCH", "PostgresDedupIndex", "open_dedup_index"]

MAX_BATCH: Final = 256
"""Lookups answered by one query, at most."""
FLUSHES: Final = 2
"""Queries under way at once, at most."""

Key = tuple[str, str, str]


class _Wanted(msgspec.Struct):
    i: int
    t: str
    c: str
    m: str


@cache
def _lookup_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        SELECT c.position, c.caught_up_at, ARRAY(
            SELECT k.i FROM json_to_recordset(%s::json) AS k(i integer, t text, c text, m text)
            JOIN {messages} AS m
                ON m.tenant_id = k.t AND m.client_id = k.c AND m.message_id = k.m
            WHERE m.status <> 'dropped')
        FROM {checkpoints} AS c WHERE c.name = %s
        """
    ).format(
        messages=sql.Identifier(schema, "messages"),
        checkpoints=sql.Identifier(schema, "projection_checkpoints"),
    )


class PostgresDedupIndex:
    """Looks notifications up in ``<schema>.messages``, many per round trip under load."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, *, wait: float) -> None:
        self._pool = pool
        self._schema = check_schema_name(schema)
        self._wait = wait
        self._waiting: list[tuple[Key, asyncio.Future[IndexAnswer]]] = []
        self._flushing = 0

    async def lookup(self, tenant_id: str, client_id: str, message_id: str) -> IndexAnswer:
        """What the index knows of (tenant, client, message id)."""
        answer: asyncio.Future[IndexAnswer] = asyncio.get_running_loop().create_future()
        self._waiting.append(((tenant_id, client_id, message_id), answer))
        if self._flushing < FLUSHES:
            self._flushing += 1
            asyncio.create_task(self._flush())  # noqa: RUF006 - it settles every future it takes
        return await answer

    async def _flush(self) -> None:
        """Answer what waits, a batch per query, until nothing does."""
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                try:
                    answers = await self._query([key for key, _ in batch])
                except IndexUnavailable as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._flushing -= 1

    async def _query(self, keys: Sequence[Key]) -> list[IndexAnswer]:
        wanted = recordset([_Wanted(i, *key) for i, key in enumerate(keys)])
        try:
            async with self._pool.connection(timeout=self._wait) as conn:
                cur = await conn.execute(
                    _lookup_sql(self._schema), (wanted, CHECKPOINT_NAME), prepare=True
                )
                row = await cur.fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return [NOTHING_INDEXED] * len(keys)  # not migrated yet: nothing projected
        except (psycopg.Error, PoolTimeout) as exc:
            raise IndexUnavailable(f"the deduplication index cannot answer: {exc}") from exc
        if row is None:
            return [NOTHING_INDEXED] * len(keys)
        position: int = row[0]
        caught_up_at: datetime | None = row[1]
        found = set(row[2])
        return [
            IndexAnswer(accepted=i in found, position=position, caught_up_at=caught_up_at)
            for i in range(len(keys))
        ]


@contextlib.asynccontextmanager
async def open_dedup_index(
    database_url: str, schema: str, *, max_connections: int = 4, wait: float = 2.0
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
