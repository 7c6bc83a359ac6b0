"""Command handling: load a client's state from the log, decide, append the one resulting event.

Every action appends exactly one event and returns only once the log acknowledged it, so an
answer the HTTP layer turns into a 2xx means the event is durable.

Registering and unregistering append with the version that was read (optimistic concurrency)
and retry a few times when another writer got there first. A push reads the client, asks the
deduplication index whether the message was accepted before, and appends once, with the dedup
key as the log's idempotency key: the log catches a copy racing the first within its duplicate
window, the index (the ``messages`` read table) every older one. When the index lags the log by
more than the window allows, the client's accepted notifications after the index's position are
read from the log instead (:mod:`relaypush.domain.dedup`), so a late copy is never accepted twice.
A duplicate is recorded as ``notification.duplicate``.

With a :class:`~relaypush.privacy.Sealer` the device token of a registration and the personal
content of an accepted push are sealed under the client's key before they are appended (the push
path seals with a cached key: no extra round trip while the key is cached), and
:meth:`RelayService.erase` makes them unreadable for good: unregister, destroy the key, append
``client.erased``.

A tenant other than the default one must exist (``POST /tenants``): its state is folded from its
events and cached for at most a second (:class:`~relaypush.aggregates.TenantStatuses`, shared with
the tenant API so that its changes apply here at once). An unknown or deleted tenant is a 400
naming ``tenant_id`` in the path; a client registered before its tenant was deleted and created
again is not registered. Registering reads the tenant afresh, since which client types it may
use follows its latest credentials.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from eventstore.errors import WrongExpectedVersion
from eventstore.log import EventLog
from relaypush.aggregates import TenantStatuses, load_client
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.clients import (
    ClientEvent,
    ClientState,
    PushToClient,
    RegisterClient,
    UnregisterClient,
    decide_erase,
    decide_push,
    decide_register,
    decide_unregister,
    record_duplicate,
)
from relaypush.domain.dedup import NOTHING_INDEXED, IndexAnswer, needs_scan
from relaypush.domain.events import (
    EVENT_TYPES,
    DropReason,
    Event,
    NotificationAccepted,
    NotificationDropped,
    ProviderType,
    decode_event,
    encode_event,
)
from relaypush.domain.payload import RegisterRequest
from relaypush.domain.streams import (
    legacy_notification_subject,
    notification_subject,
    subject_for,
)
from relaypush.domain.tenants import TenantState, unknown_tenant
from relaypush.domain.tenants import enabled_providers as tenant_providers
from relaypush.metrics import REGISTRY, Registry
from relaypush.privacy import Sealer

__all__ = [
    "Accepted",
    "ConcurrentUpdate",
    "DedupIndex",
    "Dropped",
    "Duplicate",
    "Erased",
    "ErasureNotConfigured",
    "Held",
    "PushOutcome",
    "RelayService",
]

#: How many times a register or unregister is retried after losing a race.
MAX_ATTEMPTS: Final = 5


@dataclass(frozen=True, slots=True)
class Accepted:
    """The push was recorded and will be delivered."""

    message_id: str


@dataclass(frozen=True, slots=True)
class Held:
    """The push was recorded, and is held while the tenant is suspended (delivered once it is
    un-suspended, or expired at its deadline)."""

    message_id: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The same message id was already accepted for this client; nothing is sent again."""

    message_id: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """The push was recorded as dropped and will not be delivered."""

    message_id: str
    reason: DropReason


PushOutcome = Accepted | Held | Duplicate | Dropped


@dataclass(frozen=True, slots=True)
class Erased:
    """A client was erased: ``client.erased`` is at ``position``."""

    position: int
    unregistered: bool
    """The client was registered, and a ``client.unregistered`` (reason ``erased``) came first."""
    key_ids: tuple[str, ...]
    """The keys destroyed (none when the client never had one)."""


class DedupIndex(Protocol):
    """What the service asks before accepting a push (``projections.dedup`` keeps one in the
    read tables). Raises :class:`~relaypush.domain.dedup.IndexUnavailable` when it cannot say."""

    async def lookup(self, tenant_id: str, client_id: str, message_id: str) -> IndexAnswer: ...


class _NoIndex:
    """No index: every push reads its client's accepted notifications from the log."""

    async def lookup(self, tenant_id: str, client_id: str, message_id: str) -> IndexAnswer:
        return NOTHING_INDEXED


class ConcurrentUpdate(Exception):
    """A client changed under every one of ``MAX_ATTEMPTS`` attempts; the caller may retry."""


class ErasureNotConfigured(Exception):
    """The service has no key store: nothing is sealed, so nothing could be erased."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class RelayService:
    """Registers, unregisters and pushes to clients, one appended event per action."""

    def __init__(
        self,
        log: EventLog,
        *,
        enabled_providers: Callable[[str], frozenset[ProviderType]],
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] = _new_id,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: Registry = REGISTRY,
        sealer: Sealer | None = None,
        dedup_index: DedupIndex | None = None,
        duplicate_window: float = 300.0,
        tenants: TenantStatuses | None = None,
    ) -> None:
        """``enabled_providers(tenant_id)``: the client types the default tenant may register
        (its credentials come from the settings); other tenants' follow their credentials.

        ``clock`` dates events, ``new_id`` names them, ``monotonic`` times the tenant cache.
        ``sealer`` seals personal fields (without it they are appended in plain text and
        :meth:`erase` is refused). ``dedup_index`` answers whether a message was accepted
        before (without it, the log is read for every push); ``duplicate_window`` is the log's
        (seconds), which the index may lag by. ``tenants`` is the process's tenant cache (one is
        made, timed by ``monotonic``, when none is given).
        """
        self._log = log
        self._index: DedupIndex = dedup_index or _NoIndex()
        self._window = duplicate_window
        self._sealer = sealer or Sealer(None)
        self._enabled_providers = enabled_providers
        self._clock = clock
        self._new_id = new_id
        self._tenants = tenants or TenantStatuses(log, monotonic=monotonic)
        self._appended = metrics.counter(
            "relaypush_events_appended_total", "Events appended to the log, by type", ("type",)
        )
        self._scans = metrics.counter(
            "relaypush_dedup_log_scans_total",
            "Pushes whose deduplication read the log because the index lagged behind it",
        )

    @property
    def log(self) -> EventLog:
        """The event log this service appends to."""
        return self._log

    @property
    def sealer(self) -> Sealer:
        """Seals and opens the personal fields of this service's events."""
        return self._sealer

    @property
    def tenants(self) -> TenantStatuses:
        """The tenant cache the push path reads; the tenant API shares it."""
        return self._tenants

    async def register(self, tenant_id: str, req: RegisterRequest, *, request_id: str) -> None:
        """Register or re-register ``req.client_id``; appends ``client.registered``.

        Raises ``InvalidRequest`` for an unknown tenant or (``provider_not_available``) when
        the tenant cannot use the client's type, ``ConcurrentUpdate`` after losing every race,
        and the log's errors.
        """
        command = RegisterClient(
            tenant_id=tenant_id,
            client_id=req.client_id,
            provider=req.provider,
            token=req.token,
            always_raw=req.always_raw,
            request_id=request_id,
        )
        enabled = await self._enabled(tenant_id)
        for _ in range(MAX_ATTEMPTS):
            state = await self._load_client(tenant_id, req.client_id)
            event = decide_register(
                state, command, enabled=enabled, event_id=self._new_id(), now=self._clock()
            )
            event = await self._sealer.seal_registration(event)
            if await self._append_client_event(event, state):
                return
        raise ConcurrentUpdate(f"client {req.client_id!r} kept changing while registering")

    async def unregister(self, tenant_id: str, client_id: str, *, request_id: str) -> None:
        """Unregister ``client_id`` (idempotent); appends ``client.unregistered`` every time.

        Raises ``InvalidRequest`` for an unknown tenant.
        """
        await self._tenant(tenant_id)
        command = UnregisterClient(tenant_id=tenant_id, client_id=client_id, request_id=request_id)
        for _ in range(MAX_ATTEMPTS):
            state = await self._load_client(tenant_id, client_id)
            event = decide_unregister(state, command, event_id=self._new_id(), now=self._clock())
            if await self._append_client_event(event, state):
                return
        raise ConcurrentUpdate(f"client {client_id!r} kept changing while unregistering")

    async def push(
        self, tenant_id: str, client_id: str, body: bytes, *, request_id: str
    ) -> PushOutcome:
        """Accept, deduplicate or drop a push; appends exactly one ``notification.*`` event.

        Raises ``InvalidRequest`` for an unknown tenant, a body that cannot be read or a
        payload over the provider's limit, and the log's errors (``EventLogUnavailable``).
        """
        tenant = await self._tenant(tenant_id)
        state = await self._load_client(tenant_id, client_id)
        if tenant is not None and state.registered and state.version < tenant.epoch:
            state = ClientState(version=state.version)  # registered with a deleted incarnation
        if tenant is not None:
            suspended = state.registered and tenant.suspended
        else:
            suspended = state.registered and await self._tenants.suspended(tenant_id)
        command = PushToClient(
            tenant_id=tenant_id, client_id=client_id, body=body, request_id=request_id
        )
        event = decide_push(state, command, event_id=self._new_id(), now=self._clock())
        if isinstance(event, NotificationDropped):
            await self._append(event)
            return Dropped(event.message_id, event.reason)
        event = await self._sealer.seal_notification(event, state)
        if not await self._accepted_before(event) and await self._append_accepted(event):
            return Held(event.message_id) if suspended else Accepted(event.message_id)
        await self._append(record_duplicate(event, event_id=self._new_id(), now=self._clock()))
        return Duplicate(event.message_id)

    async def erase(self, tenant_id: str, client_id: str, *, request_id: str) -> Erased:
        """Erase a client: unregister it if it is registered (reason ``erased``), destroy its
        key, then append ``client.erased``, so every personal field sealed under the key is
        unreadable from then on. Works for any tenant, deleted ones included.

        ``client.erased`` is appended at the version that follows the unregistration: a
        registration that slipped in between is unregistered and its key destroyed too, in
        another round. Raises ``ErasureNotConfigured`` without a key store,
        ``ConcurrentUpdate`` after losing every round, and the log's and store's errors.
        """
        keys = self._sealer.keys
        if keys is None:
            raise ErasureNotConfigured("no key store: personal fields are not sealed")
        destroyed: list[str] = []
        was_registered = False
        for _ in range(MAX_ATTEMPTS):
            state = await self._load_client(tenant_id, client_id)
            version = state.version
            if state.registered:
                command = UnregisterClient(
                    tenant_id=tenant_id, client_id=client_id, reason="erased", request_id=request_id
                )
                unregistered = decide_unregister(
                    state, command, event_id=self._new_id(), now=self._clock()
                )
                try:
                    version = await self._append(unregistered, expected_version=state.version)
                except WrongExpectedVersion:
                    continue
                was_registered = True
            key_id = await keys.destroy(tenant_id, client_id)
            if key_id is not None:
                destroyed.append(key_id)
            erased = decide_erase(
                tenant_id,
                client_id,
                key_ids=tuple(destroyed),
                request_id=request_id,
                event_id=self._new_id(),
                now=self._clock(),
            )
            try:
                position = await self._append(erased, expected_version=version)
            except WrongExpectedVersion:
                continue
            return Erased(position, was_registered, tuple(destroyed))
        raise ConcurrentUpdate(f"client {client_id!r} kept changing while erasing")

    async def _tenant(self, tenant_id: str) -> TenantState | None:
        """A tenant's cached state (None for the default tenant); ``InvalidRequest`` if unknown."""
        if tenant_id == DEFAULT_TENANT:
            return None
        state = await self._tenants.get(tenant_id)
        if not state.exists:
            raise unknown_tenant(tenant_id)
        return state

    async def _enabled(self, tenant_id: str) -> frozenset[ProviderType]:
        if tenant_id == DEFAULT_TENANT:
            return self._enabled_providers(tenant_id)
        state = await self._tenants.fresh(tenant_id)
        if not state.exists:
            raise unknown_tenant(tenant_id)
        return tenant_providers(state)

    async def _load_client(self, tenant_id: str, client_id: str) -> ClientState:
        return await load_client(self._log, tenant_id, client_id)

    async def _append_client_event(self, event: ClientEvent, state: ClientState) -> bool:
        """Append at the version read; False when another writer moved the client on."""
        try:
            await self._append(event, expected_version=state.version)
        except WrongExpectedVersion:
            return False
        return True

    async def _accepted_before(self, event: NotificationAccepted) -> bool:
        """Whether the same notification was accepted earlier than the log's duplicate window
        can tell: the index says so, or, when the index lags too far behind, the log does."""
        t, c, m = event.tenant_id, event.client_id, event.message_id
        answer = await self._index.lookup(t, c, m)
        if answer.accepted:
            return True
        if not needs_scan(answer, now=self._clock(), window=self._window):
            return False
        self._scans.inc()
        return await self._in_log(t, c, m, after=answer.position)

    async def _in_log(self, tenant_id: str, client_id: str, message_id: str, *, after: int) -> bool:
        """Whether the log holds the notification as accepted after position ``after``."""
        legacy = legacy_notification_subject(tenant_id, client_id, message_id, "accepted")
        found = await self._log.last(legacy)
        if found is not None and found.position > after:
            return True
        subject = notification_subject(tenant_id, client_id, "accepted")
        async for record in self._log.read(subject, from_position=after + 1):
            earlier = decode_event(record.data)
            if isinstance(earlier, NotificationAccepted) and earlier.message_id == message_id:
                return True
        return False

    async def _append_accepted(self, event: NotificationAccepted) -> bool:
        """Append the accepted event with its dedup key as idempotency key; False when the log
        says a copy was appended within its duplicate window."""
        result = await self._log.append(
            subject_for(event), encode_event(event), idempotency_key=event.dedup_key
        )
        if result.duplicate:
            return False
        self._appended.inc(type="notification.accepted")
        return True

    async def _append(self, event: Event, *, expected_version: int | None = None) -> int:
        """Append ``event``; returns its position."""
        result = await self._log.append(
            subject_for(event), encode_event(event), expected_version=expected_version
        )
        self._appended.inc(type=_TAGS[type(event)])
        return result.position


def _tag(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


_TAGS: Final[dict[type[Event], str]] = {cls: _tag(cls) for cls in EVENT_TYPES}
