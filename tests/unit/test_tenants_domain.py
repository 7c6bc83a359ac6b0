"""Tenants: the pure fold and decisions, the per-process cache, and what the relay service makes
of them (unknown tenants refused, clients of a deleted incarnation forgotten)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from eventstore import InMemoryEventLog
from eventstore.log import REST, RecordedEvent, SubjectFilter
from relaypush.aggregates import TenantStatuses
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.events import (
    Event,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantDeleted,
    TenantSuspended,
    TenantUnsuspended,
    encode_event,
)
from relaypush.domain.payload import RegisterRequest
from relaypush.domain.streams import subject_for, tenant_subject
from relaypush.domain.tenants import (
    ApnsConfig,
    CredentialChange,
    FcmConfig,
    TenantEvent,
    TenantNotFound,
    TenantState,
    carry_forward,
    configured_providers,
    decide_create,
    decide_credentials,
    decide_delete,
    decide_remove,
    decide_unsuspend,
    enabled_providers,
    fold,
)
from relaypush.metrics import Registry
from relaypush.service import Accepted, Dropped, RelayService
from tests.dedup import CaughtUpIndex

T = "acme"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def created() -> TenantCreated:
    return TenantCreated(event_id="c", occurred_at=NOW, tenant_id=T)


def apns_changed(fingerprint: str = "sha256:a") -> TenantCredentialsChanged:
    return TenantCredentialsChanged(
        event_id="a",
        occurred_at=NOW,
        tenant_id=T,
        kind="apns",
        fingerprint=fingerprint,
        apns_topic="com.example.app",
        apns_type="token",
    )


def fcm_changed() -> TenantCredentialsChanged:
    return TenantCredentialsChanged(
        event_id="f",
        occurred_at=NOW,
        tenant_id=T,
        kind="fcm_v1",
        fingerprint="sha256:f",
        fcm_project_id="proj",
    )


def suspended() -> TenantSuspended:
    return TenantSuspended(event_id="s", occurred_at=NOW, tenant_id=T, reason="BadCertificate")


def deleted() -> TenantDeleted:
    return TenantDeleted(event_id="d", occurred_at=NOW, tenant_id=T)


# the fold


def test_a_tenant_without_events_does_not_exist_unless_it_is_the_default() -> None:
    assert fold([]) == TenantState()
    assert fold([], always_exists=True).exists


def test_the_fold_follows_every_event() -> None:
    state = fold([(1, created()), (2, apns_changed()), (3, fcm_changed()), (4, suspended())])
    assert state == TenantState(
        exists=True,
        suspended=True,
        suspended_reason="BadCertificate",
        apns=ApnsConfig("sha256:a", "com.example.app", "token"),
        fcm=FcmConfig("sha256:f", "proj"),
        epoch=1,
        version=4,
    )
    lifted = fold(
        [
            (5, TenantUnsuspended(event_id="u", occurred_at=NOW, tenant_id=T)),
            (6, TenantCredentialsRemoved(event_id="r", occurred_at=NOW, tenant_id=T, kind="apns")),
        ],
        state=state,
    )
    assert not lifted.suspended
    assert lifted.suspended_reason is None
    assert lifted.apns is None
    assert lifted.fingerprint("fcm_v1") == "sha256:f"
    assert lifted.version == 6


def test_deleting_forgets_everything_and_creating_again_starts_a_new_incarnation() -> None:
    gone = fold([(1, created()), (2, apns_changed()), (3, suspended()), (9, deleted())])
    assert gone == TenantState(deleted=True, deleted_at=NOW, epoch=9, version=9)
    again = fold([(12, created())], state=gone)
    assert again == TenantState(exists=True, epoch=12, version=12)


def test_creating_twice_keeps_the_first_incarnation() -> None:
    state = fold([(1, created()), (2, apns_changed()), (3, created())])
    assert state.epoch == 1
    assert state.apns is not None


def test_providers_follow_the_credentials() -> None:
    assert enabled_providers(fold([(1, created())])) == {"noop"}
    apns_only = fold([(1, created()), (2, apns_changed())])
    assert configured_providers(apns_only) == ("apns", "apns-sandbox")
    both = fold([(1, created()), (2, apns_changed()), (3, fcm_changed())])
    assert enabled_providers(both) == {"noop", "apns", "apns-sandbox", "fcm"}


# the decisions


def test_create_is_an_upsert() -> None:
    event = decide_create(TenantState(), T, event_id="e", now=NOW, request_id="r")
    assert isinstance(event, TenantCreated)
    assert event.cause.request_id == "r"
    assert decide_create(fold([(1, created())]), T, event_id="e", now=NOW, request_id="r") is None


def test_delete_is_idempotent() -> None:
    assert isinstance(
        decide_delete(fold([(1, created())]), T, event_id="e", now=NOW, request_id=None),
        TenantDeleted,
    )
    assert decide_delete(TenantState(), T, event_id="e", now=NOW, request_id=None) is None


def test_a_credential_change_lifts_a_suspension() -> None:
    change = CredentialChange(
        kind="apns", fingerprint="sha256:b", apns_topic="t", apns_type="token"
    )
    active = fold([(1, created())])
    (only,) = decide_credentials(active, T, change, event_ids=("1", "2"), now=NOW, request_id=None)
    assert isinstance(only, TenantCredentialsChanged)
    assert (only.kind, only.fingerprint, only.apns_topic, only.apns_type) == (
        "apns",
        "sha256:b",
        "t",
        "token",
    )
    events = decide_credentials(
        fold([(1, created()), (2, suspended())]),
        T,
        change,
        event_ids=("1", "2"),
        now=NOW,
        request_id=None,
    )
    assert [type(e) for e in events] == [TenantCredentialsChanged, TenantUnsuspended]


def test_credentials_of_an_unknown_tenant_are_not_found() -> None:
    change = CredentialChange(kind="fcm_v1", fingerprint="sha256:f")
    with pytest.raises(TenantNotFound):
        decide_credentials(TenantState(), T, change, event_ids=("1", "2"), now=NOW, request_id=None)
    with pytest.raises(TenantNotFound):
        decide_remove(TenantState(), T, "apns", event_id="e", now=NOW, request_id=None)


def test_removing_what_is_not_there_records_nothing() -> None:
    state = fold([(1, created()), (2, fcm_changed())])
    assert decide_remove(state, T, "apns", event_id="e", now=NOW, request_id=None) is None
    removed = decide_remove(state, T, "fcm_v1", event_id="e", now=NOW, request_id=None)
    assert isinstance(removed, TenantCredentialsRemoved)


# the cache


class CountingLog(InMemoryEventLog):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        self.reads += 1
        return super().read(
            subject_filter,
            from_position=from_position,
            to_position=to_position,
            from_time=from_time,
        )


async def append(log: InMemoryEventLog, event: Event) -> int:
    return (await log.append(subject_for(event), encode_event(event))).position


async def test_the_cache_reads_once_a_ttl_and_only_what_is_new() -> None:
    log = CountingLog()
    clock = [0.0]
    statuses = TenantStatuses(log, ttl=1.0, monotonic=lambda: clock[0])
    await append(log, created())
    assert (await statuses.get(T)).exists
    assert (await statuses.get(T)).exists
    assert log.reads == 1
    await append(log, suspended())
    assert not (await statuses.get(T)).suspended, "a second-old state is trusted"
    clock[0] += 1.0
    assert (await statuses.get(T)).suspended
    assert log.reads == 2
    assert (await statuses.fresh(T)).suspended
    assert log.reads == 3


async def test_an_unknown_tenant_is_not_cached_so_its_creation_is_seen_at_once() -> None:
    log = InMemoryEventLog()
    statuses = TenantStatuses(log, monotonic=lambda: 0.0)
    assert not (await statuses.get(T)).exists
    await append(log, created())
    assert (await statuses.get(T)).exists


async def test_remember_never_goes_back_to_an_older_state() -> None:
    statuses = TenantStatuses(InMemoryEventLog(), monotonic=lambda: 0.0)
    statuses.remember(T, TenantState(exists=True, version=5))
    statuses.remember(T, TenantState(deleted=True, version=3))
    assert (await statuses.get(T)).exists


async def test_concurrent_readers_share_one_read() -> None:
    log = CountingLog()
    await append(log, created())
    statuses = TenantStatuses(log)
    states = await asyncio.gather(*(statuses.get(T) for _ in range(20)))
    assert all(s.exists for s in states)
    assert log.reads == 1


# the relay service


REQUEST = RegisterRequest(client_id="z6MkC", provider="noop", token="tok", always_raw=False)
PUSH = b'{"id": "m1", "payload": "ab:1:eA=="}'


def service_on(log: InMemoryEventLog) -> RelayService:
    return RelayService(
        log,
        enabled_providers=lambda _: frozenset({"noop"}),
        metrics=Registry(),
        dedup_index=CaughtUpIndex(),
    )


async def test_clients_of_an_unknown_tenant_are_refused_in_the_path() -> None:
    log = InMemoryEventLog()
    service = service_on(log)
    for action in (
        service.register(T, REQUEST, request_id="r"),
        service.unregister(T, "z6MkC", request_id="r"),
        service.push(T, "z6MkC", PUSH, request_id="r"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            await action
        assert [(f.field, f.location) for f in refused.value.fields] == [("tenant_id", "path")]
    assert await log.last_position() == 0


async def test_a_created_tenant_takes_noop_and_refuses_unconfigured_providers() -> None:
    log = InMemoryEventLog()
    await append(log, created())
    service = service_on(log)
    await service.register(T, REQUEST, request_id="r")
    assert await service.push(T, "z6MkC", PUSH, request_id="r") == Accepted("m1")
    apns = RegisterRequest(client_id="z6MkD", provider="apns", token="t", always_raw=False)
    with pytest.raises(InvalidRequest) as refused:
        await service.register(T, apns, request_id="r")
    assert [e.name for e in refused.value.errors] == ["provider_not_available"]


async def test_a_tenant_created_again_has_forgotten_its_old_clients() -> None:
    log = InMemoryEventLog()
    await append(log, created())
    service = service_on(log)
    await service.register(T, REQUEST, request_id="r")
    await append(log, deleted())
    await append(log, created())
    service.tenants.remember(T, await service.tenants.fresh(T))
    again = await service.push(T, "z6MkC", PUSH, request_id="r")
    assert again == Dropped("m1", "client_not_registered")


async def test_a_deleted_tenant_is_refused_at_once_in_the_process_that_knows() -> None:
    log = InMemoryEventLog()
    position = await append(log, created())
    service = service_on(log)
    await service.register(T, REQUEST, request_id="r")
    gone = TenantState(deleted=True, epoch=position + 5, version=position + 5)
    service.tenants.remember(T, gone)
    with pytest.raises(InvalidRequest):
        await service.push(T, "z6MkC", PUSH, request_id="r")


async def test_the_default_tenant_needs_no_creation() -> None:
    log = InMemoryEventLog()
    service = service_on(log)
    await service.register(DEFAULT_TENANT, REQUEST, request_id="r")
    assert await service.push(DEFAULT_TENANT, "z6MkC", PUSH, request_id="r") == Accepted("m1")
    assert (await service.tenants.get(DEFAULT_TENANT)).exists
    assert tenant_subject(DEFAULT_TENANT) == (DEFAULT_TENANT, "tenant")


class RoundTrips(CountingLog):
    """Counts every read of the log, ``last`` and ``read`` alike."""

    def __init__(self) -> None:
        super().__init__()
        self.lasts = 0

    async def last(self, subject: tuple[str, ...]) -> RecordedEvent | None:
        self.lasts += 1
        return await super().last(subject)


async def test_a_tenant_push_is_one_read_and_one_append_while_the_tenant_is_cached() -> None:
    log = RoundTrips()
    await append(log, created())
    service = service_on(log)
    await service.register(T, REQUEST, request_id="r")
    await service.push(T, "z6MkC", b'{"id": "warm", "payload": "ab:1:eA=="}', request_id="r")
    reads, lasts, position = log.reads, log.lasts, await log.last_position()
    assert await service.push(T, "z6MkC", PUSH, request_id="r") == Accepted("m1")
    assert (log.reads - reads, log.lasts - lasts) == (0, 1)
    assert await log.last_position() == position + 1


def test_a_carried_forward_tenant_folds_to_the_same_state() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    events: list[tuple[int, TenantEvent]] = [
        (1, TenantCreated(event_id="a", occurred_at=now, tenant_id=T)),
        (
            4,
            TenantCredentialsChanged(
                event_id="b",
                occurred_at=now,
                tenant_id=T,
                kind="apns",
                fingerprint="fp-a",
                apns_topic="com.x",
                apns_type="token",
            ),
        ),
        (
            7,
            TenantCredentialsChanged(
                event_id="c",
                occurred_at=now,
                tenant_id=T,
                kind="fcm_v1",
                fingerprint="fp-f",
                fcm_project_id="p",
            ),
        ),
        (
            8,
            TenantCredentialsChanged(
                event_id="d",
                occurred_at=now,
                tenant_id=T,
                kind="webpush",
                fingerprint="fp-w",
                vapid_public_key="BPub",
            ),
        ),
        (9, TenantSuspended(event_id="e", occurred_at=now, tenant_id=T, reason="fcm: 401")),
    ]
    state = fold(events)
    carried = carry_forward(state, T, created_at=now, event_id="z", now=now)
    assert carried.carried_position == 9
    again = fold([(12, carried)])
    assert again == replace(state, version=12)
    assert fold([*events, (12, carried)]) == again
    # folding goes on from it as from the original events
    unsuspended = TenantUnsuspended(event_id="u", occurred_at=now, tenant_id=T)
    assert fold([(12, carried), (13, unsuspended)]).suspended is False


def test_unsuspending_lifts_a_suspension_once_and_needs_a_tenant() -> None:
    suspended = fold(
        [
            (1, TenantCreated(event_id="a", occurred_at=NOW, tenant_id=T)),
            (2, TenantSuspended(event_id="b", occurred_at=NOW, tenant_id=T, reason="x")),
        ]
    )
    event = decide_unsuspend(suspended, T, event_id="u", now=NOW, request_id="r")
    assert isinstance(event, TenantUnsuspended)
    assert event.cause.request_id == "r"
    lifted = fold([(3, event)], state=suspended)
    assert decide_unsuspend(lifted, T, event_id="v", now=NOW, request_id=None) is None
    with pytest.raises(TenantNotFound):
        decide_unsuspend(TenantState(), T, event_id="w", now=NOW, request_id=None)
