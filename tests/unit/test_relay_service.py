"""RelayService on an in-memory log: optimistic concurrency, the tenant cache, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from eventstore.log import AppendResult, RecordedEvent, Subject
from eventstore.memory import InMemoryEventLog
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.events import (
    ClientRegistered,
    ClientUnregistered,
    ProviderType,
    TenantSuspended,
    decode_event,
    encode_event,
)
from relaypush.domain.payload import RegisterRequest
from relaypush.domain.streams import client_subject, tenant_subject
from relaypush.metrics import Registry
from relaypush.service import (
    Accepted,
    ConcurrentUpdate,
    Dropped,
    Duplicate,
    Held,
    RelayService,
)
from tests.dedup import CaughtUpIndex

TENANT = DEFAULT_TENANT  # other tenants must be created first: see test_tenants_domain.py
CLIENT = "z6MkClient"
NOOP: frozenset[ProviderType] = frozenset({"noop"})
REQUEST = RegisterRequest(client_id=CLIENT, provider="noop", token="tok", always_raw=False)
PUSH = b'{"id": "m1", "payload": "ab:1:eA=="}'


class RacingLog(InMemoryEventLog):
    """Before each of the next ``races`` client appends, another writer registers the client."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.reads = 0

    async def last(self, subject: Subject) -> RecordedEvent | None:
        self.reads += 1
        return await super().last(subject)

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        if self.races > 0 and subject == client_subject(TENANT, CLIENT):
            self.races -= 1
            rival = ClientRegistered(
                event_id="rival",
                occurred_at=datetime.now(UTC),
                tenant_id=TENANT,
                client_id=CLIENT,
                provider="noop",
                token="rival-token",
            )
            await super().append(subject, encode_event(rival))
        return await super().append(
            subject,
            data,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
            headers=headers,
        )


async def client_events(log: InMemoryEventLog) -> list[object]:
    return [decode_event(e.data) async for e in log.read() if e.subject[1] == "client"]


async def test_register_retries_after_losing_a_race() -> None:
    log = RacingLog(races=2)
    service = RelayService(log, enabled_providers=lambda _: NOOP, metrics=Registry())
    await service.register(TENANT, REQUEST, request_id="r")
    recorded = await client_events(log)
    assert len(recorded) == 3
    last = recorded[-1]
    assert isinstance(last, ClientRegistered)
    assert last.token == "tok"


async def test_unregister_retries_after_losing_a_race() -> None:
    log = RacingLog(races=1)
    service = RelayService(log, enabled_providers=lambda _: NOOP, metrics=Registry())
    await service.unregister(TENANT, CLIENT, request_id="r")
    assert isinstance((await client_events(log))[-1], ClientUnregistered)


async def test_losing_every_race_is_a_concurrent_update() -> None:
    log = RacingLog(races=100)
    service = RelayService(log, enabled_providers=lambda _: NOOP, metrics=Registry())
    with pytest.raises(ConcurrentUpdate):
        await service.register(TENANT, REQUEST, request_id="r")
    assert all(getattr(e, "event_id", None) == "rival" for e in await client_events(log))


async def test_provider_not_enabled_appends_nothing() -> None:
    log = InMemoryEventLog()
    service = RelayService(log, enabled_providers=lambda _: frozenset(), metrics=Registry())
    with pytest.raises(InvalidRequest):
        await service.register(TENANT, REQUEST, request_id="r")
    assert await log.last_position() == 0


async def test_push_outcomes_and_the_appended_counter() -> None:
    registry = Registry()
    log = InMemoryEventLog()
    service = RelayService(log, enabled_providers=lambda _: NOOP, metrics=registry)
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Dropped(
        "m1", "client_not_registered"
    )
    await service.register(TENANT, REQUEST, request_id="r")
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Accepted("m1")
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Duplicate("m1")
    counter = registry.counter("relaypush_events_appended_total", "", ("type",))
    assert [
        counter.value(type=t)
        for t in (
            "notification.dropped",
            "client.registered",
            "notification.accepted",
            "notification.duplicate",
        )
    ] == [1, 1, 1, 1]


async def test_push_reads_the_log_once_while_the_tenant_is_cached() -> None:
    now = [0.0]
    log = RacingLog(races=0)
    service = RelayService(
        log,
        enabled_providers=lambda _: NOOP,
        monotonic=lambda: now[0],
        metrics=Registry(),
        dedup_index=CaughtUpIndex(),
    )
    await service.register(TENANT, REQUEST, request_id="r")
    await service.push(TENANT, CLIENT, b'{"id": "warm", "payload": "ab:1:eA=="}', request_id="r")
    suspended = TenantSuspended(
        event_id="s", occurred_at=datetime.now(UTC), tenant_id=TENANT, reason="bad key"
    )
    await log.append(tenant_subject(TENANT), encode_event(suspended))
    before = log.reads
    outcome = await service.push(TENANT, CLIENT, PUSH, request_id="r")
    assert outcome == Accepted("m1")
    assert log.reads == before + 1
    now[0] += 1.0
    later = await service.push(
        TENANT, CLIENT, b'{"id": "m2", "payload": "ab:1:eA=="}', request_id="r"
    )
    assert later == Held("m2")


async def test_a_copy_older_than_the_duplicate_window_is_found_in_the_log_without_an_index() -> (
    None
):
    clock = [1000.0]
    log = InMemoryEventLog(duplicate_window=10.0, now=lambda: clock[0])
    registry = Registry()
    service = RelayService(log, enabled_providers=lambda _: NOOP, metrics=registry)
    await service.register(TENANT, REQUEST, request_id="r")
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Accepted("m1")
    clock[0] += 60.0  # the log's own idempotency key is forgotten
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Duplicate("m1")
    other = b'{"id": "m2", "payload": "ab:1:eA=="}'
    assert await service.push(TENANT, CLIENT, other, request_id="r") == Accepted("m2")
    scans = registry.counter("relaypush_dedup_log_scans_total", "")
    assert scans.value() == 3


async def test_what_the_index_holds_is_a_duplicate_at_any_age() -> None:
    clock = [1000.0]
    log = InMemoryEventLog(duplicate_window=10.0, now=lambda: clock[0])
    index = CaughtUpIndex()
    service = RelayService(
        log, enabled_providers=lambda _: NOOP, metrics=Registry(), dedup_index=index
    )
    await service.register(TENANT, REQUEST, request_id="r")
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Accepted("m1")
    index.accepted.add((TENANT, CLIENT, "m1"))
    clock[0] += 10_000.0
    before = await log.last_position()
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Duplicate("m1")
    types = [decode_event(e.data).__struct_config__.tag async for e in log.read()]
    assert types[before:] == ["notification.duplicate"]


async def test_a_lagging_index_is_completed_from_the_log_after_its_position() -> None:
    clock = [1000.0]
    log = InMemoryEventLog(duplicate_window=10.0, now=lambda: clock[0])
    stale = datetime(2000, 1, 1, tzinfo=UTC)
    index = CaughtUpIndex(position=0, caught_up_at=stale)
    service = RelayService(
        log,
        enabled_providers=lambda _: NOOP,
        metrics=Registry(),
        dedup_index=index,
        duplicate_window=10.0,
    )
    await service.register(TENANT, REQUEST, request_id="r")
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Accepted("m1")
    clock[0] += 60.0
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Duplicate("m1")
    # an index that reaches past the accepted event but does not hold it is believed
    index.position = await log.last_position()
    assert await service.push(TENANT, CLIENT, PUSH, request_id="r") == Accepted("m1")


async def test_a_recent_index_miss_relies_on_the_logs_idempotency_key() -> None:
    log = InMemoryEventLog()
    index = CaughtUpIndex()
    service = RelayService(
        log, enabled_providers=lambda _: NOOP, metrics=Registry(), dedup_index=index
    )
    await service.register(TENANT, REQUEST, request_id="r")
    first, second = await asyncio.gather(
        service.push(TENANT, CLIENT, PUSH, request_id="a"),
        service.push(TENANT, CLIENT, PUSH, request_id="b"),
    )
    assert sorted([type(first).__name__, type(second).__name__]) == ["Accepted", "Duplicate"]
    assert index.lookups == 2
