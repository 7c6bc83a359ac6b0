"""What one send attempt came to, and the one-method interface every provider implements.

The answers themselves (:class:`Delivered`, :class:`TokenInvalid`, ...) are values of the delivery
domain (:mod:`relaypush.domain.delivery`), which decides what each means; a provider sorts
whatever its service answered into one of them, and unknown answers are retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relaypush.domain.delivery import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
)
from relaypush.domain.events import NotificationAccepted, ProviderType

__all__ = [
    "CredentialsInvalid",
    "Delivered",
    "Outcome",
    "Provider",
    "Rejected",
    "Retry",
    "Target",
    "TokenInvalid",
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a notification goes: the tenant, and the client's provider and token at send time."""

    tenant_id: str
    client_id: str
    provider: ProviderType
    token: str


class Provider(Protocol):
    """One push service. ``send`` never raises for what the service answered: it returns it."""

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome: ...

    async def close(self) -> None: ...
