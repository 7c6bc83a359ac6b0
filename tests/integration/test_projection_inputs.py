"""Whatever text the log holds, the projector writes its rows and moves on.

A value PostgreSQL cannot store or index would fail its batch, and since the batch is retried
from the same checkpoint, stop the projection for good. Two such values: a device token too long
for a btree entry, and a NUL (PostgreSQL text cannot hold one) in a tenant's suspension reason.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from eventstore import JetStreamEventLog
from projections import Projector
from relaypush.domain.events import (
    ClientRegistered,
    Event,
    TenantCreated,
    TenantSuspended,
    encode_event,
)
from relaypush.domain.streams import subject_for

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Env:
    log: JetStreamEventLog
    url: str
    schema: str


@pytest_asyncio.fixture(name="env")
async def fx_env(nats_url: str, database_url: str, unique_name: str) -> AsyncIterator[Env]:
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
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(unique_name))
            )


async def append_all(log: JetStreamEventLog, events: Sequence[Event]) -> int:
    last = 0
    for event in events:
        last = (await log.append(subject_for(event), encode_event(event))).position
    return last


async def query(env: Env, text: str, *params: object) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(env.schema)))
        cur = await conn.execute(text.encode(), params)
        return list(await cur.fetchall())


def incompressible_token(length: int, seed: int) -> str:
    """Text that compression cannot shrink under the btree limit: random code points."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x100, 0xD000)) for _ in range(length))


async def test_a_token_too_long_for_a_btree_entry_does_not_stop_the_projection(env: Env) -> None:
    long_token = incompressible_token(3000, seed=1)  # about 9 kB of UTF-8
    events: list[Event] = [
        ClientRegistered(
            event_id=f"e{n}",
            occurred_at=T0 + timedelta(seconds=n),
            tenant_id="t",
            client_id=f"c{n}",
            provider="noop",
            token=token,
        )
        for n, token in enumerate([long_token, "short-token", long_token + "x"])
    ]
    last = await append_all(env.log, events)
    projector = Projector(env.log, env.url, schema=env.schema)
    assert await projector.catch_up() == 3
    assert await projector.position() == last

    rows = await query(env, "SELECT client_id, token FROM devices ORDER BY client_id")
    assert rows == [("c0", long_token), ("c1", "short-token"), ("c2", long_token + "x")]


async def test_active_devices_are_found_by_token_through_the_index(env: Env) -> None:
    long_token = incompressible_token(3000, seed=2)
    events: list[Event] = [
        ClientRegistered(
            event_id=f"e{n}",
            occurred_at=T0 + timedelta(seconds=n),
            tenant_id="t",
            client_id=f"c{n}",
            provider="noop",
            token=long_token if n == 7 else f"token-{n}",
        )
        for n in range(50)
    ]
    await append_all(env.log, events)
    await Projector(env.log, env.url, schema=env.schema).catch_up()

    lookup = (
        "SELECT client_id FROM devices"
        " WHERE tenant_id = %s AND md5(token) = md5(%s) AND token = %s AND active"
    )
    assert await query(env, lookup, "t", long_token, long_token) == [("c7",)]
    assert await query(env, lookup, "t", "token-9", "token-9") == [("c9",)]
    assert await query(env, lookup, "t", "nobody", "nobody") == []
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(env.schema)))
        await conn.execute("SET enable_seqscan = off")
        cur = await conn.execute(("EXPLAIN " + lookup).encode(), ("t", "x", "x"))
        plan = "\n".join(row[0] for row in await cur.fetchall())
    assert "devices_active_token_md5" in plan


async def test_a_nul_in_a_tenant_value_is_stored_as_a_replacement_character(env: Env) -> None:
    events: list[Event] = [
        TenantCreated(event_id="e1", occurred_at=T0, tenant_id="acme"),
        TenantSuspended(
            event_id="e2",
            occurred_at=T0 + timedelta(seconds=1),
            tenant_id="acme",
            reason="provider said \x00 BadCertificate",
        ),
        TenantCreated(event_id="e3", occurred_at=T0 + timedelta(seconds=2), tenant_id="other"),
    ]
    last = await append_all(env.log, events)
    projector = Projector(env.log, env.url, schema=env.schema)
    assert await projector.catch_up() == 3
    assert await projector.position() == last
    rows = await query(env, "SELECT tenant_id, suspended_reason FROM tenants ORDER BY tenant_id")
    assert rows == [("acme", "provider said \ufffd BadCertificate"), ("other", None)]
