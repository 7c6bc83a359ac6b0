"""Keeping state alive in a log that drops its oldest events: carrying it forward.

With stream limits (``RELAYPUSH_LOG_MAX_AGE``, ``RELAYPUSH_LOG_MAX_BYTES``) the log drops its
oldest events, and with them the facts that still make today's state: a client registered a year
ago is registered by an event a year old, and a tenant is the fold of all its events. Before the
limits reach them, the :class:`Keeper` appends that state again:

- a registered client whose last lifecycle event is old gets a ``client.carried_forward``: the
  same registration (token still sealed as it was, same ``occurred_at``), appended at the
  client's version as read, so a newer registration or unregistration always wins;
- a tenant whose oldest event is old gets a ``tenant.carried_forward`` with its whole state,
  appended at the tenant's version as read; folding from it gives the same state.

"Old" is the older half of the log by age (events older than half ``RELAYPUSH_LOG_MAX_AGE``) or by
size (positions in the first half between the stream's first and last), so a state is carried
well before its events can be dropped, and at most once per half a limit. Which clients are old
comes from the ``devices`` read table (their last lifecycle event's position); every candidate is
checked against the log itself before anything is appended. The archive
(:mod:`relaypush.audit.archive`) keeps the dropped events for auditors; this module keeps the
service working.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
import structlog
from psycopg import sql

from eventstore import ANY, EventLog, WrongExpectedVersion
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.clients import carry_forward as carry_client
from relaypush.domain.events import (
    ClientRegistered,
    TenantCarriedForward,
    TenantCreated,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import TENANT, client_subject, subject_for, tenant_subject
from relaypush.domain.tenants import TENANT_EVENT_TYPES, TenantEvent, fold
from relaypush.domain.tenants import carry_forward as carry_tenant
from relaypush.metrics import REGISTRY, Registry

__all__ = ["Keeper"]

log = structlog.get_logger(__name__)

BATCH: Final = 1000
"""Clients carried per query of the ``devices`` table."""


class Keeper:
    """Carries clients' registrations and tenants' states forward ahead of the log's limits."""

    def __init__(
        self,
        event_log: EventLog,
        conninfo: str,
        *,
        schema: str,
        max_age: float,
        max_bytes: int,
        interval: float = 300.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        metrics: Registry = REGISTRY,
    ) -> None:
        self._log = event_log
        self._conninfo = conninfo
        self._schema = schema
        self._max_age = max_age
        self._max_bytes = max_bytes
        self._interval = interval
        self._clock = clock
        self._new_id = new_id
        self._carried = metrics.counter(
            "relaypush_carried_forward_total",
            "States appended again before the log's limits drop them, by aggregate",
            ("aggregate",),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Carry forward every ``interval`` seconds until ``stop`` is set; failures (the log or
        PostgreSQL unreachable) are logged and tried again at the next round."""
        while not stop.is_set():
            try:
                await self.carry_once()
            except Exception as exc:
                log.warning("carry_forward_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)

    async def horizon(self) -> int:
        """The first position that is not old yet (0: nothing is old)."""
        first, last = await self._log.first_position(), await self._log.last_position()
        if last == 0:
            return 0
        horizon = 0
        if self._max_bytes > 0:
            horizon = max(horizon, first + (last - first) // 2)
        if self._max_age > 0:
            since = self._clock() - timedelta(seconds=self._max_age / 2)
            young = last + 1
            async for event in self._log.read(from_time=since):
                young = event.position
                break
            horizon = max(horizon, young)
        return horizon

    async def carry_once(self) -> int:
        """One round: carry what is old; returns how many states were carried."""
        horizon = await self.horizon()
        if horizon <= await self._log.first_position():
            return 0
        carried = await self._carry_tenants(horizon) + await self._carry_clients(horizon)
        if carried:
            log.info("carried_forward", states=carried, horizon=horizon)
        return carried

    async def _carry_tenants(self, horizon: int) -> int:
        events: dict[str, list[tuple[int, TenantEvent]]] = defaultdict(list)
        created: dict[str, datetime] = {}
        async for record in self._log.read((ANY, TENANT)):
            event = decode_event(record.data)
            if isinstance(event, TENANT_EVENT_TYPES):
                events[event.tenant_id].append((record.position, event))
                if isinstance(event, TenantCreated):
                    created[event.tenant_id] = event.occurred_at
                elif isinstance(event, TenantCarriedForward) and event.created_at is not None:
                    created.setdefault(event.tenant_id, event.created_at)
        carried = 0
        for tenant_id, tenant_events in events.items():
            base = max(
                (p for p, e in tenant_events if isinstance(e, TenantCarriedForward)),
                default=tenant_events[0][0],
            )
            if base >= horizon:
                continue
            state = fold(tenant_events, always_exists=tenant_id == DEFAULT_TENANT)
            event = carry_tenant(
                state,
                tenant_id,
                created_at=created.get(tenant_id),
                event_id=self._new_id(),
                now=self._clock(),
            )
            try:
                await self._log.append(
                    tenant_subject(tenant_id), encode_event(event), expected_version=state.version
                )
            except WrongExpectedVersion:
                continue  # changed meanwhile: the next round looks again
            self._carried.inc(aggregate="tenant")
            carried += 1
        return carried

    async def _carry_clients(self, horizon: int) -> int:
        query = sql.SQL(
            "SELECT tenant_id, client_id, last_position FROM {} WHERE active"
            " AND last_position < %s AND (tenant_id, client_id) > (%s, %s)"
            " ORDER BY tenant_id, client_id LIMIT %s"
        ).format(sql.Identifier(self._schema, "devices"))
        carried = 0
        after = ("", "")
        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            while True:
                cur = await conn.execute(query, (horizon, *after, BATCH))
                rows: list[tuple[Any, ...]] = await cur.fetchall()
                for tenant_id, client_id, position in rows:
                    carried += await self._carry_client(tenant_id, client_id, position)
                if len(rows) < BATCH:
                    return carried
                after = (rows[-1][0], rows[-1][1])

    async def _carry_client(self, tenant_id: str, client_id: str, position: int) -> int:
        record = await self._log.last(client_subject(tenant_id, client_id))
        if record is None or record.position != position:
            return 0  # the table is behind the log, or the event is gone already
        event = decode_event(record.data)
        if not isinstance(event, ClientRegistered):
            return 0
        carried = carry_client(event, record.position, event_id=self._new_id())
        try:
            await self._log.append(
                subject_for(carried), encode_event(carried), expected_version=record.position
            )
        except WrongExpectedVersion:
            return 0
        self._carried.inc(aggregate="client")
        return 1
