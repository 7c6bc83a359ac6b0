"""Deduplication at any age over JetStream and PostgreSQL: the log's idempotency key for copies
racing each other, the ``messages`` index for older ones, the log itself when the index lags."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta

import psycopg
import pytest_asyncio
from psycopg import sql

from eventstore import AppendResult, EventLog, JetStreamEventLog, Subject
from projections import Projector, wait_for_position
from projections.dedup import PostgresDedupIndex, open_dedup_index
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.events import decode_event
from relaypush.domain.payload import RegisterRequest
from relaypush.metrics import Registry
from relaypush.service import Accepted, Duplicate, RelayService
from tests.eventlogs import WrappedLog
from tests.integration.conftest import Env

T = DEFAULT_TENANT
WAIT = 30.0


class ForgetfulLog(WrappedLog):
    """Appends without idempotency keys: as if every copy came after the duplicate window."""

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        return await super().append(
            subject, data, expected_version=expected_version, headers=headers
        )


def push_body(message_id: str) -> bytes:
    return f'{{"id": "{message_id}", "payload": "ab:1:eA=="}}'.encode()


def service(log: EventLog, index: PostgresDedupIndex | None, registry: Registry) -> RelayService:
    return RelayService(
        log,
        enabled_providers=lambda _: frozenset({"noop"}),
        metrics=registry,
        dedup_index=index,
        duplicate_window=300.0,
    )


@pytest_asyncio.fixture(name="index")
async def fx_index(env: Env) -> AsyncIterator[PostgresDedupIndex]:
    async with open_dedup_index(env.url, env.schema) as index:
        yield index


async def project(env: Env, log: EventLog | None = None) -> None:
    """Project everything and let the projector record that it saw the log's head."""
    projector = Projector(log or env.log, env.url, schema=env.schema, fetch_timeout=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await wait_for_position(env.url, env.schema, await env.log.last_position(), WAIT)
        await caught_up(env)
    finally:
        stop.set()
        await task


async def caught_up(env: Env) -> None:
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        for _ in range(int(WAIT / 0.05)):
            cur = await conn.execute(
                sql.SQL("SELECT caught_up_at FROM {}").format(
                    sql.Identifier(env.schema, "projection_checkpoints")
                )
            )
            row = await cur.fetchone()
            if row is not None and row[0] is not None:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the projector never recorded that it caught up")


def scans(registry: Registry) -> float:
    return registry.counter("relaypush_dedup_log_scans_total", "").value()


async def test_a_copy_the_log_forgot_is_a_duplicate_through_the_index(
    env: Env, index: PostgresDedupIndex
) -> None:
    registry = Registry()
    forgetful = ForgetfulLog(env.log)
    relay = service(forgetful, index, registry)
    await relay.register(T, RegisterRequest("w.1", "noop", "tok", False), request_id="r")
    assert await relay.push(T, "w.1", push_body("m1"), request_id="r") == Accepted("m1")
    assert scans(registry) == 1  # nothing projected yet: the log was read
    await project(env)
    assert await relay.push(T, "w.1", push_body("m1"), request_id="r") == Duplicate("m1")
    assert await relay.push(T, "w.1", push_body("m2"), request_id="r") == Accepted("m2")
    assert scans(registry) == 1  # the projector had caught up: the index was believed
    # the same id for another client is another notification
    await relay.register(T, RegisterRequest("w.*", "noop", "tok", False), request_id="r")
    assert await relay.push(T, "w.*", push_body("m1"), request_id="r") == Accepted("m1")


async def test_an_index_behind_the_log_is_completed_from_the_log(
    env: Env, index: PostgresDedupIndex
) -> None:
    registry = Registry()
    relay = service(ForgetfulLog(env.log), index, registry)
    await relay.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
    await project(env)
    # the projector stops; what is accepted now is in the log only
    assert await relay.push(T, "w1", push_body("late"), request_id="r") == Accepted("late")
    async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET caught_up_at = %s").format(
                sql.Identifier(env.schema, "projection_checkpoints")
            ),
            (datetime.now(UTC) - timedelta(hours=1),),
        )
    assert await relay.push(T, "w1", push_body("late"), request_id="r") == Duplicate("late")
    assert scans(registry) >= 1


async def test_copies_racing_through_two_api_processes_are_accepted_once(
    env: Env, index: PostgresDedupIndex, nats_url: str
) -> None:
    other_log = await JetStreamEventLog.connect(
        nats_url, stream=env.schema.upper(), prefix=env.schema
    )
    try:
        first = service(env.log, index, Registry())
        second = service(other_log, index, Registry())
        await first.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
        outcomes = await asyncio.gather(
            *(
                relay.push(T, "w1", push_body(f"m{i}"), request_id="r")
                for i in range(20)
                for relay in (first, second, first)
            )
        )
        assert sum(isinstance(o, Accepted) for o in outcomes) == 20
        assert sum(isinstance(o, Duplicate) for o in outcomes) == 40
    finally:
        await other_log.close()


async def test_a_copy_after_a_restart_is_a_duplicate(
    env: Env, index: PostgresDedupIndex, nats_url: str
) -> None:
    before = service(ForgetfulLog(env.log), index, Registry())
    await before.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
    assert await before.push(T, "w1", push_body("m1"), request_id="r") == Accepted("m1")
    await project(env)
    restarted_log = await JetStreamEventLog.connect(
        nats_url, stream=env.schema.upper(), prefix=env.schema
    )
    try:
        async with open_dedup_index(env.url, env.schema) as fresh_index:
            after = service(ForgetfulLog(restarted_log), fresh_index, Registry())
            assert await after.push(T, "w1", push_body("m1"), request_id="r") == Duplicate("m1")
    finally:
        await restarted_log.close()
    types = [decode_event(r.data).__struct_config__.tag async for r in env.log.read()]
    assert types.count("notification.accepted") == 1


async def test_ids_past_retention_are_forgotten(env: Env, index: PostgresDedupIndex) -> None:
    relay = service(ForgetfulLog(env.log), index, Registry())
    await relay.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
    assert await relay.push(T, "w1", push_body("old"), request_id="r") == Accepted("old")
    await project(env)
    month_later = Projector(
        env.log,
        env.url,
        schema=env.schema,
        fetch_timeout=0.2,
        dedup_retention=30 * 86400.0,
        clock=lambda: datetime.now(UTC) + timedelta(days=31),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(month_later.run(stop))
    try:
        async with await psycopg.AsyncConnection.connect(env.url, autocommit=True) as conn:
            for _ in range(int(WAIT / 0.05)):
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(
                        sql.Identifier(env.schema, "messages")
                    )
                )
                row = await cur.fetchone()
                if row is not None and row[0] == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the old message was never pruned")
    finally:
        stop.set()
        await task
    await project(env)
    assert await relay.push(T, "w1", push_body("old"), request_id="r") == Accepted("old")


async def test_concurrent_lookups_are_answered_each_for_its_own_notification(
    env: Env, index: PostgresDedupIndex
) -> None:
    relay = service(env.log, index, Registry())
    for client in ("a", "b"):
        await relay.register(T, RegisterRequest(client, "noop", "tok", False), request_id="r")
    for i in range(0, 300, 3):
        await relay.push(T, "a", push_body(f"m{i}"), request_id="r")
    await project(env)
    keys = [(T, client, f"m{i}") for i in range(300) for client in ("a", "b")]
    answers = await asyncio.gather(*(index.lookup(*key) for key in keys))
    assert [a.accepted for a in answers] == [c == "a" and int(m[1:]) % 3 == 0 for _, c, m in keys]
    assert {a.position for a in answers} == {await env.log.last_position()}
