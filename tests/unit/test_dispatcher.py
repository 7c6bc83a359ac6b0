"""The dispatcher over the in-memory log: outcomes recorded, acks after recording, sharing work,
and what a crash mid-send can and cannot cause."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from eventstore import AppendResult, EventLog, EventLogUnavailable, InMemoryEventLog, Subject
from relaypush.delivery.dispatcher import Dispatcher, backoff
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    Target,
    TokenInvalid,
)
from relaypush.domain.events import (
    AnyEvent,
    ClientRegistered,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import dedup_key, subject_for
from relaypush.metrics import Registry
from tests.eventlogs import NoAckLog, NotingLog, WrappedLog

TENANT = "0000-0000-0000-0000"


class ScriptedProvider:
    """Answers each send with the next scripted outcome (then Delivered); can hold sends."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[str] = []
        self.hold: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        self.sent.append(notification.message_id)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        return self.outcomes.pop(0) if self.outcomes else Delivered(provider_id="p-1")

    async def close(self) -> None:
        return None


def now() -> datetime:
    return datetime.now(UTC)


async def register(log: InMemoryEventLog, client: str) -> None:
    event = ClientRegistered(
        event_id=uuid.uuid4().hex,
        occurred_at=now(),
        tenant_id=TENANT,
        client_id=client,
        provider="noop",
        token=f"token-{client}",
    )
    await log.append(subject_for(event), encode_event(event))


async def accept(log: InMemoryEventLog, client: str, message: str, blob: str = "YQ==") -> None:
    event = NotificationAccepted(
        event_id=uuid.uuid4().hex,
        occurred_at=now(),
        tenant_id=TENANT,
        client_id=client,
        message_id=message,
        dedup_key=dedup_key(TENANT, client, message),
        topic="t",
        flags=1,
        flag_names=("encrypted",),
        encrypted=True,
        blob=blob,
    )
    await log.append(subject_for(event), encode_event(event), idempotency_key=event.dedup_key)


async def events(log: InMemoryEventLog) -> list[AnyEvent]:
    return [decode_event(e.data) async for e in log.read()]


async def until(log: InMemoryEventLog, what: Callable[[list[AnyEvent]], bool]) -> None:
    for _ in range(500):
        if what(await events(log)):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(await events(log))


def count(kind: type, evs: list[AnyEvent]) -> int:
    return sum(isinstance(e, kind) for e in evs)


@pytest_asyncio.fixture(name="log")
async def fx_log() -> AsyncIterator[InMemoryEventLog]:
    log = InMemoryEventLog()
    await register(log, "c1")
    yield log
    await log.close()


def dispatcher(log: EventLog, provider: ScriptedProvider, **kw: float) -> Dispatcher:
    return Dispatcher(
        log,
        {"noop": provider},
        deadline=kw.pop("deadline", 60.0),
        send_timeout=kw.pop("send_timeout", 1.0),
        retry_base=0.01,
        metrics=Registry(),
    )


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (10, 150.0, 300.0), (30, 150.0, 300.0)],
)
def test_backoff_doubles_with_jitter_and_is_capped(attempt: int, low: float, high: float) -> None:
    delays = [backoff(attempt) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1, "jittered"


@pytest.mark.parametrize(
    ("outcome", "tag", "permanent"),
    [
        (Delivered("x"), "notification.delivered", None),
        (Rejected("PayloadTooLarge"), "notification.delivery_failed", True),
        (TokenInvalid("Unregistered"), "client.unregistered", None),
        (CredentialsInvalid("InvalidProviderToken"), "tenant.suspended", None),
    ],
)
async def test_each_outcome_is_recorded(
    log: InMemoryEventLog, outcome: Outcome, tag: str, permanent: bool | None
) -> None:
    provider = ScriptedProvider(outcome)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(log, provider).run(stop))
    await accept(log, "c1", "m1")
    await until(log, lambda ev: any(e.__struct_config__.tag == tag for e in ev))
    stop.set()
    await task
    failed = [e for e in await events(log) if isinstance(e, NotificationDeliveryFailed)]
    if permanent is not None:
        assert [f.permanent for f in failed] == [permanent]
    assert provider.sent == ["m1"]


async def test_a_retry_is_attempted_again_until_delivered(log: InMemoryEventLog) -> None:
    provider = ScriptedProvider(Retry("503"), Retry("503"))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(log, provider).run(stop))
    await accept(log, "c1", "m1")
    await until(log, lambda ev: count(NotificationDelivered, ev) == 1)
    stop.set()
    await task
    evs = await events(log)
    assert [(f.attempt, f.permanent) for f in evs if isinstance(f, NotificationDeliveryFailed)] == [
        (1, False),
        (2, False),
    ]
    assert provider.sent == ["m1", "m1", "m1"]


async def test_retries_stop_at_the_deadline(log: InMemoryEventLog) -> None:
    provider = ScriptedProvider(*[Retry("503")] * 50)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(log, provider, deadline=0.3).run(stop))
    await accept(log, "c1", "m1")
    await until(
        log,
        lambda ev: any(isinstance(e, NotificationDeliveryFailed) and e.permanent for e in ev),
    )
    stop.set()
    await task
    final = [e for e in await events(log) if isinstance(e, NotificationDeliveryFailed)][-1]
    assert final.reason.startswith("expired")


async def test_a_crash_mid_send_sends_again_at_most_once_more(log: InMemoryEventLog) -> None:
    first = ScriptedProvider()
    first.hold = asyncio.Event()  # the send never returns: the process dies during it
    crashed = asyncio.create_task(dispatcher(log, first, send_timeout=0.1).run(asyncio.Event()))
    await accept(log, "c1", "m1")
    await first.started.wait()
    crashed.cancel()  # nothing recorded, nothing acked
    with pytest.raises(asyncio.CancelledError):
        await crashed

    second = ScriptedProvider()
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(log, second, send_timeout=0.1).run(stop))
    await until(log, lambda ev: count(NotificationDelivered, ev) == 1)
    # once it is recorded, no later redelivery sends it again
    third = ScriptedProvider()
    again = asyncio.create_task(dispatcher(log, third, send_timeout=0.1).run(stop))
    await accept(log, "c1", "m2")
    await until(log, lambda ev: count(NotificationDelivered, ev) == 2)
    stop.set()
    await asyncio.gather(task, again)
    assert first.sent == ["m1"]
    assert second.sent.count("m1") == 1
    assert "m1" not in third.sent
    assert count(NotificationDelivered, await events(log)) == 2


async def test_a_redelivered_notification_already_delivered_is_not_sent_again(
    log: InMemoryEventLog,
) -> None:
    # the first dispatcher records the delivery, and dies before its ack reaches the log
    first = ScriptedProvider()
    stop_first = asyncio.Event()
    lossy = asyncio.create_task(dispatcher(NoAckLog(log), first, send_timeout=0.1).run(stop_first))
    await accept(log, "c1", "m1")
    await until(log, lambda ev: count(NotificationDelivered, ev) == 1)
    stop_first.set()
    await lossy
    # the event comes back after the ack wait: its history says it was delivered
    second = ScriptedProvider()
    noting = NotingLog(log)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(noting, second, send_timeout=0.1).run(stop))
    await accept(log, "c1", "m2")
    await until(log, lambda ev: count(NotificationDelivered, ev) == 2)
    m1_position = 2
    await until(log, lambda _: any(p == m1_position and n > 1 for p, n in noting.acked))
    stop.set()
    await task
    assert first.sent == ["m1"]
    assert second.sent == ["m2"]
    assert count(NotificationDelivered, await events(log)) == 2


async def test_dispatchers_sharing_the_durable_send_each_notification_once(
    log: InMemoryEventLog,
) -> None:
    a, b = ScriptedProvider(), ScriptedProvider()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(dispatcher(log, p).run(stop)) for p in (a, b)]
    for i in range(100):
        await accept(log, "c1", f"m{i}")
    await until(log, lambda ev: count(NotificationDelivered, ev) == 100)
    stop.set()
    await asyncio.gather(*tasks)
    assert sorted(a.sent + b.sent) == sorted(f"m{i}" for i in range(100))


async def test_a_payload_too_large_for_the_clients_provider_now_is_never_sent(
    log: InMemoryEventLog,
) -> None:
    """Accepted while the client was on FCM (whose limit it fits), sent after it moved to a
    provider whose body it does not fit: it fails for good, and nothing reaches the provider."""
    provider = ScriptedProvider()
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher(log, provider).run(stop))
    await accept(log, "c1", "big", blob="A" * 3960)
    await until(log, lambda ev: count(NotificationDeliveryFailed, ev) == 1)
    stop.set()
    await task
    (failed,) = [e for e in await events(log) if isinstance(e, NotificationDeliveryFailed)]
    assert failed.permanent
    assert failed.reason.startswith("payload_too_large")
    assert provider.sent == []


class RecordingStalls(WrappedLog):
    """Appends of ``notification.delivered`` fail as unreachable until ``healed`` is set."""

    def __init__(self, inner: EventLog, *, report_after: int) -> None:
        super().__init__(inner)
        self.healed = asyncio.Event()
        self.refused = 0
        self.stalled = asyncio.Event()
        self._report_after = report_after

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        if subject[-1] == "delivered" and not self.healed.is_set():
            self.refused += 1
            if self.refused >= self._report_after:
                self.stalled.set()
            raise EventLogUnavailable("the log is away")
        return await super().append(
            subject,
            data,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
            headers=headers,
        )


async def test_a_delivery_that_cannot_be_recorded_yet_is_retried_never_resent(
    log: InMemoryEventLog,
) -> None:
    """The provider took it; recording it fails for several ack waits. The event stays in
    progress with the log: no other dispatcher sends it again, and it is recorded once."""
    stalled = RecordingStalls(log, report_after=14)  # 0.1 s apart: over four ack waits of 0.3 s
    first, second = ScriptedProvider(), ScriptedProvider()
    stop = asyncio.Event()
    slow = Dispatcher(
        stalled,
        {"noop": first},
        deadline=60.0,
        send_timeout=0.1,
        record_retry=(0.1, 0.1),
        metrics=Registry(),
    )
    tasks = [
        asyncio.create_task(slow.run(stop)),
        asyncio.create_task(dispatcher(log, second, send_timeout=0.1).run(stop)),
    ]
    await accept(log, "c1", "m1")
    await stalled.stalled.wait()
    stalled.healed.set()
    await until(log, lambda ev: count(NotificationDelivered, ev) == 1)
    stop.set()
    await asyncio.gather(*tasks)
    assert first.sent + second.sent == ["m1"]
    assert count(NotificationDelivered, await events(log)) == 1
