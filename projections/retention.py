"""Retention of the read tables: rows older than their horizon are deleted, a slice at a time.

The log keeps every event (or archives it, see ``docs/operations.md``); the read tables keep
what is still useful. ``messages`` rows (the deduplication index and the message status) go once
the notification was accepted longer ago than ``RELAYPUSH_DEDUP_RETENTION`` (a drop, once it was
recorded that long ago): from then on the same message id is a new notification. The projector
prunes while it holds the schema's lock, in slices, so a large backlog never holds locks long.
Retention is the one place where what the tables hold depends on the time of day: a rebuild
brings pruned rows back until the next pruning removes them again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from typing import Any, Final

import psycopg
from psycopg import sql

__all__ = ["SLICE", "prune"]

SLICE: Final = 5000
"""Rows deleted by one statement."""


@cache
def _prune_sql(schema: str) -> tuple[sql.Composed, sql.Composed]:
    table = sql.Identifier(schema, "messages")
    accepted = sql.SQL(
        "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"
        " WHERE accepted_at < %s LIMIT %s)"
    ).format(table=table)
    dropped = sql.SQL(
        "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"
        " WHERE status = 'dropped' AND updated_at < %s LIMIT %s)"
    ).format(table=table)
    return accepted, dropped


async def prune(
    conn: psycopg.AsyncConnection[Any], schema: str, *, now: datetime, dedup_retention: float
) -> int:
    """Delete the rows past their horizon; returns how many. ``dedup_retention`` 0 keeps all."""
    if dedup_retention <= 0:
        return 0
    horizon = now - timedelta(seconds=dedup_retention)
    deleted = 0
    for statement in _prune_sql(schema):
        while True:
            cur = await conn.execute(statement, (horizon, SLICE))
            deleted += cur.rowcount
            if cur.rowcount < SLICE:
                break
    return deleted
