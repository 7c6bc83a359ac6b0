"""Fixtures shared by the integration tests: a fresh stream and schemas of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import psycopg
import pytest_asyncio
from psycopg import sql

from eventstore import JetStreamEventLog


@dataclass(frozen=True)
class Env:
    log: JetStreamEventLog
    url: str
    schema: str

    def other(self, suffix: str) -> str:
        return f"{self.schema}_{suffix}"


@pytest_asyncio.fixture(name="env")
async def fx_env(nats_url: str, database_url: str, unique_name: str) -> AsyncIterator[Env]:
    """A fresh stream and prefix; every schema named after ``unique_name`` dropped at the end."""
    stream = unique_name.upper()
    log = await JetStreamEventLog.connect(nats_url, stream=stream, prefix=unique_name)
    try:
        yield Env(log, database_url, unique_name)
    finally:
        await log.close()
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = %s OR nspname LIKE %s",
                (unique_name, unique_name + "\\_%"),
            )
            for (name,) in await cur.fetchall():
                await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
