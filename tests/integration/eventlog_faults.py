"""Event-log wrappers that inject faults into a projector, through the ``EventLog`` seam.

Each wraps a real log and changes one thing: acks that never arrive (a crash between commit and
ack), subscriptions that replay everything, a delivery lost from a batch (a gap), reads that
stop early (a rebuild from a log that lags). Used by ``test_projections.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from eventstore import (
    REST,
    Delivery,
    EventLog,
    RecordedEvent,
    SubjectFilter,
    SubjectFilters,
    Subscription,
)
from tests.eventlogs import FaultyLog, NoAckLog, WrappedLog

__all__ = ["LaggingLog", "LossyLog", "NoAckLog", "ReplayingLog", "WrappedLog"]


class ReplayingLog(WrappedLog):
    """Subscribes from the very start whatever the projector asks: everything comes again."""

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        return await super().subscribe(
            durable,
            subject_filter,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            from_position=1,
        )


class LossyLog(FaultyLog):
    """Loses the second delivery of the first batch of three or more: a gap."""

    def __init__(self, inner: EventLog) -> None:
        super().__init__(inner)
        self.lost: list[int] = []

    def alter(self, deliveries: list[Delivery]) -> list[Delivery]:
        if self.lost or len(deliveries) < 3:
            return deliveries
        self.lost.append(deliveries[1].event.position)
        return deliveries[:1] + deliveries[2:]


class LaggingLog(WrappedLog):
    """A log whose reads end at ``upto``: a rebuild from it is behind the live tables."""

    def __init__(self, inner: EventLog, upto: int) -> None:
        super().__init__(inner)
        self.upto = upto

    def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner.read(
            subject_filter, from_position=from_position, to_position=self.upto, from_time=from_time
        )

    async def last_position(self) -> int:
        return min(self.upto, await self.inner.last_position())
