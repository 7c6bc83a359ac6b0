"""Reading an aggregate's current state from the log.

A client keeps its whole state in its last lifecycle event, so its state is one ``last`` away. A
tenant's state is a fold over its few events (:mod:`relaypush.domain.tenants`), cached per process
for a second by :class:`TenantStatuses`. The API and the dispatcher both load them through here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final

from eventstore import EventLog, RecordedEvent
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.clients import ClientEvent, ClientState, client_state
from relaypush.domain.events import (
    ClientErased,
    ClientRegistered,
    ClientUnregistered,
    decode_event,
)
from relaypush.domain.streams import client_subject, tenant_subject
from relaypush.domain.tenants import TENANT_EVENT_TYPES, TenantEvent, TenantState, fold

__all__ = ["TENANT_CACHE_SECONDS", "TenantStatuses", "TenantSuspensions", "load_client"]

TENANT_CACHE_SECONDS: Final = 1.0


async def load_client(log: EventLog, tenant_id: str, client_id: str) -> ClientState:
    """The client's state; ``version`` is the position of its last event (0: none)."""
    record = await log.last(client_subject(tenant_id, client_id))
    if record is None:
        return client_state(None, version=0)
    return client_state(_client_event(record), version=record.position)


def _client_event(record: RecordedEvent) -> ClientEvent:
    event = decode_event(record.data)
    if not isinstance(event, ClientRegistered | ClientUnregistered | ClientErased):
        raise TypeError(f"unexpected {type(event).__name__} at position {record.position}")
    return event


class TenantStatuses:
    """Each tenant's state folded from its events, cached for at most ``ttl`` seconds.

    A tenant's events are few (creation, credential changes, suspensions), so a refresh reads
    only the events after the cached state (the log answers "nothing new" in one request), and
    concurrent callers share one refresh. A change takes effect within ``ttl`` everywhere and at
    once in the process that appended it (:meth:`remember`). A tenant that has no event is not
    cached, so that one created by another process is seen at its first request; the default
    tenant exists without events.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        ttl: float = TENANT_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        default_tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._log = log
        self._ttl = ttl
        self._monotonic = monotonic
        self._default = default_tenant
        self._cache: dict[str, tuple[float, TenantState]] = {}
        self._loading: dict[str, asyncio.Future[TenantState]] = {}

    async def get(self, tenant_id: str) -> TenantState:
        """The tenant's state, as read at most ``ttl`` seconds ago."""
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > self._monotonic():
            return cached[1]
        return await self.fresh(tenant_id)

    async def fresh(self, tenant_id: str) -> TenantState:
        """The tenant's state as the log holds it now (read-your-writes across processes)."""
        loading = self._loading.get(tenant_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[TenantState] = asyncio.get_running_loop().create_future()
        self._loading[tenant_id] = future
        try:
            state = await self._read(tenant_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only the callers that waited on it see it
            raise
        else:
            future.set_result(state)
            self.remember(tenant_id, state)
            return self._cache[tenant_id][1] if tenant_id in self._cache else state
        finally:
            del self._loading[tenant_id]

    def remember(self, tenant_id: str, state: TenantState) -> None:
        """Cache ``state`` (say, after this process appended to the tenant) unless newer is held."""
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[1].version > state.version:
            return
        if state.version == 0 and tenant_id != self._default:
            self._cache.pop(tenant_id, None)
            return
        self._cache[tenant_id] = (self._monotonic() + self._ttl, state)

    def mark(self, tenant_id: str, suspended: bool) -> None:
        """Record a suspension change this process is appending, so it takes effect here now."""
        cached = self._cache.get(tenant_id)
        if cached is not None:
            state = replace(cached[1], suspended=suspended)
            self._cache[tenant_id] = (self._monotonic() + self._ttl, state)

    async def suspended(self, tenant_id: str) -> bool:
        return (await self.get(tenant_id)).suspended

    async def _read(self, tenant_id: str) -> TenantState:
        cached = self._cache.get(tenant_id)
        base = cached[1] if cached is not None else None
        start = base.version + 1 if base is not None else 1
        events: list[tuple[int, TenantEvent]] = []
        async for record in self._log.read(tenant_subject(tenant_id), from_position=start):
            event = decode_event(record.data)
            if isinstance(event, TENANT_EVENT_TYPES):
                events.append((record.position, event))
        return fold(events, always_exists=tenant_id == self._default, state=base)


#: The former name: the cache began as a suspension flag only.
TenantSuspensions = TenantStatuses
