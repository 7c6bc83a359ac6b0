"""A pass-through ``EventLog`` wrapper for tests that change one behaviour of a real log.

Subclasses override what they alter (an append that fails, a subscription that loses acks...)
and inherit the rest; ``wrap`` lets them alter each subscription.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import datetime

from eventstore import (
    REST,
    AppendResult,
    Delivery,
    EventLog,
    RecordedEvent,
    Subject,
    SubjectFilter,
    SubjectFilters,
    Subscription,
)

__all__ = ["FaultyLog", "NoAckLog", "NotingLog", "UnackedDelivery", "WrappedLog"]


class WrappedLog:
    """The real log, with subscriptions a subclass may alter."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        return await self.inner.append(
            subject,
            data,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
            headers=headers,
        )

    async def last(self, subject: Subject) -> RecordedEvent | None:
        return await self.inner.last(subject)

    def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner.read(
            subject_filter,
            from_position=from_position,
            to_position=to_position,
            from_time=from_time,
        )

    async def first_position(self) -> int:
        return await self.inner.first_position()

    async def last_position(self) -> int:
        return await self.inner.last_position()

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        inner = await self.inner.subscribe(
            durable,
            subject_filter,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            from_position=from_position,
        )
        return self.wrap(inner)

    def wrap(self, subscription: Subscription) -> Subscription:
        return subscription

    async def close(self) -> None:
        """The test owns the inner log."""


class UnackedDelivery:
    """A delivery whose ack is lost: the process died right after its commit."""

    def __init__(self, inner: Delivery) -> None:
        self.inner = inner

    @property
    def event(self) -> RecordedEvent:
        return self.inner.event

    @property
    def num_delivered(self) -> int:
        return self.inner.num_delivered

    @property
    def pending(self) -> int:
        return self.inner.pending

    async def ack(self) -> None:
        return

    async def nak(self, delay: float | None = None) -> None:
        await self.inner.nak(delay)

    async def in_progress(self) -> None:
        await self.inner.in_progress()


class FilteredSubscription:
    """A subscription whose fetched batches pass through ``alter``."""

    def __init__(self, inner: Subscription, owner: FaultyLog) -> None:
        self.inner = inner
        self.owner = owner

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        return self.owner.alter(await self.inner.fetch(max_messages, timeout))

    async def pending(self) -> int:
        return await self.inner.pending()

    async def close(self) -> None:
        await self.inner.close()


class FaultyLog(WrappedLog):
    """Base of the fault injectors: ``alter`` sees every fetched batch."""

    def wrap(self, subscription: Subscription) -> Subscription:
        return FilteredSubscription(subscription, self)

    def alter(self, deliveries: list[Delivery]) -> list[Delivery]:
        return deliveries


class NoAckLog(FaultyLog):
    """Commits happen, acks never reach the server."""

    def alter(self, deliveries: list[Delivery]) -> list[Delivery]:
        return [UnackedDelivery(d) for d in deliveries]


class NotedDelivery(UnackedDelivery):
    """A delivery whose acks are noted by its log (and reach the server)."""

    def __init__(self, inner: Delivery, owner: NotingLog) -> None:
        super().__init__(inner)
        self.owner = owner

    async def ack(self) -> None:
        await self.inner.ack()
        self.owner.acked.append((self.event.position, self.num_delivered))


class NotingLog(FaultyLog):
    """Notes every ack: ``acked`` holds (position, num_delivered) pairs."""

    def __init__(self, inner: EventLog) -> None:
        super().__init__(inner)
        self.acked: list[tuple[int, int]] = []

    def alter(self, deliveries: list[Delivery]) -> list[Delivery]:
        return [NotedDelivery(d, self) for d in deliveries]
