"""What every implementation's deliveries share: an event handed out, settled at most once.

``ack`` and ``nak`` settle a delivery; settling it again does nothing, and ``in_progress`` after
settling does nothing either. Implementations say what acking, naking and extending mean.
"""

from __future__ import annotations

from eventstore.log import RecordedEvent

__all__ = ["SettledOnce"]


class SettledOnce:
    """Base of the ``Delivery`` implementations."""

    def __init__(self, event: RecordedEvent, num_delivered: int, pending: int) -> None:
        self._event = event
        self._num_delivered = num_delivered
        self._pending = pending
        self._settled = False

    @property
    def event(self) -> RecordedEvent:
        return self._event

    @property
    def num_delivered(self) -> int:
        return self._num_delivered

    @property
    def pending(self) -> int:
        return self._pending

    async def ack(self) -> None:
        if self._settle():
            await self._ack()

    async def nak(self, delay: float | None = None) -> None:
        if self._settle():
            await self._nak(delay)

    async def in_progress(self) -> None:
        if not self._settled:
            await self._extend()

    def _settle(self) -> bool:
        settled, self._settled = self._settled, True
        return not settled

    async def _ack(self) -> None:
        raise NotImplementedError

    async def _nak(self, delay: float | None) -> None:
        raise NotImplementedError

    async def _extend(self) -> None:
        raise NotImplementedError
