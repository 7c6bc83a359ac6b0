"""A log with limits over JetStream and PostgreSQL: the archive keeps what the stream drops,
history and verification read both, the keeper carries state forward, the projector backfills."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from eventstore import JetStreamEventLog
from projections import Projector, compare_schemas, rebuild_into
from relaypush.aggregates import TenantStatuses
from relaypush.audit.archive import Archive, ArchivedLog, Archiver
from relaypush.audit.chainer import Chainer
from relaypush.audit.history import HistoryQuery, history
from relaypush.audit.keys import generate_signing_key
from relaypush.audit.verify import BreakKind, verify
from relaypush.config import DEFAULT_TENANT, ConfigError, Settings
from relaypush.domain.events import (
    TenantCreated,
    TenantSuspended,
    decode_event,
    encode_event,
)
from relaypush.domain.payload import RegisterRequest
from relaypush.domain.streams import tenant_subject
from relaypush.metrics import Registry
from relaypush.retention import Keeper
from relaypush.service import Accepted, RelayService
from tests.integration.conftest import Env

T = DEFAULT_TENANT
LIMIT = 24 * 1024
"""Bytes the test streams keep: a few dozen events."""


@pytest_asyncio.fixture(name="limited")
async def fx_limited(env: Env, nats_url: str) -> AsyncIterator[JetStreamEventLog]:
    """The env's stream, with a byte limit, through a connection of its own."""
    limited = await JetStreamEventLog.connect(
        nats_url, stream=env.schema.upper(), prefix=env.schema, max_bytes=LIMIT
    )
    try:
        yield limited
    finally:
        await limited.close()


def relay(log: JetStreamEventLog | ArchivedLog) -> RelayService:
    return RelayService(log, enabled_providers=lambda _: frozenset({"noop"}), metrics=Registry())


def body(message_id: str) -> bytes:
    blob = "eA==" * 40  # events of a few hundred bytes
    return json.dumps({"id": message_id, "payload": f"ab:1:{blob}"}).encode()


async def fill(
    service: RelayService, client: str, count: int, start: int = 0, *, tenant: str = T
) -> None:
    """Pushes to ``client``, registered again first (no keeper carries it in these tests)."""
    await service.register(tenant, RegisterRequest(client, "noop", "tok", False), request_id="r")
    for i in range(start, start + count):
        pushed = await service.push(tenant, client, body(f"m{i}"), request_id="r")
        assert pushed == Accepted(f"m{i}")


async def test_the_archive_keeps_what_the_stream_drops_and_the_chain_verifies(
    limited: JetStreamEventLog, tmp_path: Path
) -> None:
    archive = Archive(tmp_path / "archive")
    archiver = Archiver(limited, archive, segment_events=25, metrics=Registry())
    whole = ArchivedLog(limited, archive)
    key = generate_signing_key()
    chainer = Chainer(whole, key, every_events=20, metrics=Registry())
    service = relay(limited)
    await service.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
    for round_ in range(8):
        await fill(service, "w1", 15, start=round_ * 15)
        await chainer.catch_up()
        await archiver.archive_once(flush=True)
    last = await limited.last_position()
    assert await limited.first_position() > 1, "the stream dropped its oldest events"
    positions = [e.position async for e in whole.read()]
    assert positions == list(range(1, last + 1))
    assert next(s.first for s in archive.segments()) == 1

    report = await verify(whole.read(), [key.public_key])
    assert report.ok, report.describe()
    assert report.protected_upto > 0
    # history of the client goes back past the stream's first position
    found = [e.position async for e in history(whole, HistoryQuery(client="w1", limit=1000))]
    assert found[0] == 1
    assert len(found) == 129  # 9 registrations, 120 pushes
    # an archive alone verifies offline, as an export does
    offline = await verify(archive.read(), [key.public_key])
    assert offline.ok
    # a second chainer resumes from the archive's checkpoints
    resumed = Chainer(whole, key, every_events=20, metrics=Registry())
    await fill(service, "w1", 5, start=1000)
    await resumed.catch_up()
    assert (await verify(whole.read(), [key.public_key])).ok


async def test_what_the_stream_dropped_before_it_was_archived_is_a_gap(
    limited: JetStreamEventLog, tmp_path: Path
) -> None:
    archive = Archive(tmp_path / "archive")
    registry = Registry()
    archiver = Archiver(limited, archive, segment_events=1000, metrics=registry)
    service = relay(limited)
    await service.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
    await fill(service, "w1", 10)
    await archiver.archive_once(flush=True)
    archived = archive.last_position()
    for round_ in range(8):  # the archiver is away meanwhile
        await fill(service, "w1", 15, start=10 + round_ * 15)
    await archiver.archive_once(flush=True)
    lost = registry.counter("relaypush_archive_lost_events_total", "").value()
    assert lost > 0
    report = await verify(ArchivedLog(limited, archive).read(), [])
    assert report.broken is not None
    assert report.broken.kind == BreakKind.DROPPED
    assert report.broken.position == archived + 1


async def test_the_keeper_carries_clients_and_tenants_past_the_limits(
    env: Env, limited: JetStreamEventLog, tmp_path: Path
) -> None:
    service = relay(limited)
    tenants = TenantStatuses(limited)
    created = TenantCreated(event_id="c", occurred_at=datetime.now(UTC), tenant_id="acme")
    await limited.append(tenant_subject("acme"), encode_event(created))
    await service.register("acme", RegisterRequest("old", "noop", "tok-a", False), request_id="r")
    suspended = TenantSuspended(
        event_id="s",
        occurred_at=created.occurred_at,
        tenant_id=T,
        reason="apns: InvalidProviderToken",
    )
    await limited.append(tenant_subject(T), encode_event(suspended))
    await service.register(T, RegisterRequest("also-old", "noop", "tok-b", False), request_id="r")

    keeper = Keeper(limited, env.url, schema=env.schema, max_age=0, max_bytes=LIMIT)
    projector = Projector(limited, env.url, schema=env.schema)
    carried = 0
    for round_ in range(12):
        await fill(service, "writer", 10, start=round_ * 10, tenant="acme")
        await projector.catch_up()
        carried += await keeper.carry_once()
    first = await limited.first_position()
    assert first > 6, "every original registration and tenant event was dropped"
    assert carried >= 4
    # still registered, still existing, still suspended: the pushes are accepted (and held)
    assert (await tenants.fresh("acme")).exists
    assert (await tenants.fresh(T)).suspended
    push = await service.push("acme", "old", body("late"), request_id="r")
    assert push == Accepted("late")
    types = [decode_event(e.data).__struct_config__.tag async for e in limited.read()]
    assert "client.carried_forward" in types
    assert "tenant.carried_forward" in types
    # read tables rebuilt from what the live log holds still know them
    rebuilt = env.other("fromlive")
    await rebuild_into(limited, env.url, rebuilt)
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        cur = await conn.execute(
            sql.SQL("SELECT tenant_id, client_id, active FROM {} ORDER BY 1, 2").format(
                sql.Identifier(rebuilt, "devices")
            )
        )
        assert await cur.fetchall() == [
            (T, "also-old", True),
            ("acme", "old", True),
            ("acme", "writer", True),
        ]
        cur = await conn.execute(
            sql.SQL("SELECT tenant_id, suspended FROM {} ORDER BY 1").format(
                sql.Identifier(rebuilt, "tenants")
            )
        )
        assert await cur.fetchall() == [(T, True), ("acme", False)]


async def test_the_projector_backfills_from_the_archive(
    env: Env, limited: JetStreamEventLog, tmp_path: Path
) -> None:
    archive = Archive(tmp_path / "archive")
    archiver = Archiver(limited, archive, segment_events=25, metrics=Registry())
    service = relay(limited)
    await service.register(T, RegisterRequest("w1", "noop", "tok", False), request_id="r")
    for round_ in range(8):
        await fill(service, "w1", 15, start=round_ * 15)
        await archiver.archive_once(flush=True)
    assert await limited.first_position() > 1
    whole = ArchivedLog(limited, archive)
    projector = Projector(limited, env.url, schema=env.schema, history=whole)
    assert await projector.catch_up() == await limited.last_position()
    await rebuild_into(whole, env.url, env.other("whole"))
    assert await compare_schemas(env.url, env.schema, env.other("whole")) == []


def test_a_log_may_not_drop_what_may_still_be_delivered() -> None:
    with pytest.raises(ConfigError, match="RELAYPUSH_LOG_MAX_AGE"):
        Settings(log_max_age=3600, delivery_deadline=86400)
    assert Settings(log_max_age=7 * 86400).archive_directory == Path("relaypush-data/archive")
    assert Settings().archive_directory is None
