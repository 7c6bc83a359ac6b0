"""What one send attempt came to, as values a provider returns and the dispatcher records.

A provider sorts whatever its service answered into one of these; unknown answers are retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
class Delivered:
    provider_id: str | None


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    """The device token is dead: the client is unregistered."""

    reason: str


@dataclass(frozen=True, slots=True)
class CredentialsInvalid:
    """The tenant's provider credentials are wrong: the tenant is suspended."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """This message can never be sent."""

    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later; ``after`` is the provider's Retry-After in seconds, if it gave one."""

    reason: str
    after: float | None = None


Outcome = Delivered | TokenInvalid | CredentialsInvalid | Rejected | Retry


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
