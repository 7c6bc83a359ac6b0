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
    EventLog,
    RecordedEvent,
    Subject,
    SubjectFilter,
    Subscription,
)

__all__ = ["WrappedLog"]


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

    async def last_position(self) -> int:
        return await self.inner.last_position()

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilter = (REST,),
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
