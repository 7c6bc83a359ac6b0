"""The ``noop`` provider: records each delivery in memory and sends nothing.

For development and tests, so the whole pipeline runs before any real provider is configured.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from relaypush.delivery.outcomes import Delivered, Outcome, Target
from relaypush.domain.events import NotificationAccepted

__all__ = ["NoopProvider", "NoopSend"]


@dataclass(frozen=True, slots=True)
class NoopSend:
    notification: NotificationAccepted
    target: Target
    provider_id: str


@dataclass(slots=True)
class NoopProvider:
    """Accepts everything; keeps the last ``keep`` sends for inspection."""

    keep: int = 10_000
    sent: list[NoopSend] = field(default_factory=list)

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        provider_id = f"noop-{uuid.uuid4()}"
        self.sent.append(NoopSend(notification, target, provider_id))
        if len(self.sent) > self.keep:
            del self.sent[: len(self.sent) - self.keep]
        return Delivered(provider_id=provider_id)

    async def close(self) -> None:
        return None
