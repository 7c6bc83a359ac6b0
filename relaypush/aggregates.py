"""Reading an aggregate's current state from the log: one ``last`` per subject.

Clients and tenants keep their whole state in their last lifecycle event, so their state is one
direct read away; the API and the dispatcher both load them through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from eventstore import EventLog, RecordedEvent
from relaypush.domain.clients import ClientEvent, ClientState, client_state
from relaypush.domain.events import (
    ClientRegistered,
    ClientUnregistered,
    TenantSuspended,
    decode_event,
)
from relaypush.domain.streams import client_subject, tenant_subject

__all__ = ["TENANT_CACHE_SECONDS", "TenantSuspensions", "load_client"]

TENANT_CACHE_SECONDS: Final = 1.0


async def load_client(log: EventLog, tenant_id: str, client_id: str) -> ClientState:
    """The client's state; ``version`` is the position of its last event (0: none)."""
    record = await log.last(client_subject(tenant_id, client_id))
    if record is None:
        return client_state(None, version=0)
    return client_state(_client_event(record), version=record.position)


def _client_event(record: RecordedEvent) -> ClientEvent:
    event = decode_event(record.data)
    if not isinstance(event, ClientRegistered | ClientUnregistered):
        raise TypeError(f"unexpected {type(event).__name__} at position {record.position}")
    return event


class TenantSuspensions:
    """Whether a tenant is suspended (its last event is ``tenant.suspended``), read at most once
    per ``ttl`` seconds per tenant: a suspension takes effect within a second everywhere."""

    def __init__(
        self,
        log: EventLog,
        *,
        ttl: float = TENANT_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._ttl = ttl
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, bool]] = {}

    def mark(self, tenant_id: str, suspended: bool) -> None:
        """Record a change this process itself appended, so it takes effect here at once."""
        self._cache[tenant_id] = (self._monotonic() + self._ttl, suspended)

    async def suspended(self, tenant_id: str) -> bool:
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > self._monotonic():
            return cached[1]
        record = await self._log.last(tenant_subject(tenant_id))
        suspended = record is not None and isinstance(decode_event(record.data), TenantSuspended)
        self._cache[tenant_id] = (self._monotonic() + self._ttl, suspended)
        return suspended
