"""Time travel: a client's state as it was at a position or a time, folded from its events.

The client's lifecycle events (its client subject) say whether it was registered, with which
provider and token (shown as a fingerprint); its notification subjects say what became of each
push, folded by the delivery domain (:mod:`relaypush.domain.delivery`) as the dispatcher and the
``messages`` table fold them: ``pending`` (accepted, not delivered yet, perhaps after retryable
failures or held for a suspended tenant), ``delivered``, ``failed`` (a permanent failure),
``expired`` (its deadline passed) or ``dropped`` (never accepted). A token sealed under the
client's key is opened with the ``sealer`` given, and shown as ``erased`` when its key is gone
(``sealed`` when no sealer was given). :class:`ClientFold` is the
pure fold; :func:`client_state_at` reads the events up to the cut and folds them.
"""

from __future__ import annotations

import re
from contextlib import aclosing
from datetime import UTC, datetime

import msgspec

from eventstore import REST, EventLog, SubjectFilter
from relaypush.audit.errors import QueryError
from relaypush.audit.export import recorded_time
from relaypush.audit.history import merged_read
from relaypush.domain import delivery
from relaypush.domain.clients import NO_CLIENT, ClientState, evolve
from relaypush.domain.delivery import NotificationState, Status
from relaypush.domain.events import (
    ClientErased,
    ClientRegistered,
    ClientUnregistered,
    Event,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    decode_event,
)
from relaypush.logs import fingerprint
from relaypush.privacy import Sealer

__all__ = [
    "ClientFold",
    "ClientSnapshot",
    "NotificationIds",
    "client_state_at",
    "parse_at",
    "parse_time",
]

_POSITION = re.compile(r"[0-9]+")


class NotificationIds(msgspec.Struct, kw_only=True):
    count: int
    ids: list[str]


class ClientSnapshot(msgspec.Struct, kw_only=True):
    """A client as it was at the cut: ``at_position`` or ``at_time``, whichever was asked."""

    tenant_id: str
    client_id: str
    at_position: int | None
    at_time: datetime | None
    last_event_position: int
    registered: bool
    provider: str | None
    token_fingerprint: str | None
    always_raw: bool
    registered_at: datetime | None
    unregistered_at: datetime | None
    unregister_reason: str | None
    pending: NotificationIds
    delivered: NotificationIds
    failed: NotificationIds
    dropped: NotificationIds
    erased_at: datetime | None = None
    """When the client was last erased (its key destroyed), if it was by the cut."""
    expired: NotificationIds = msgspec.field(
        default_factory=lambda: NotificationIds(count=0, ids=[])
    )
    """Notifications whose deadline passed before they could be delivered."""


class ClientFold:
    """Folds one client's events, in position order, into what :class:`ClientSnapshot` shows."""

    def __init__(self, *, unopened: str = "erased") -> None:
        """``unopened``: what a token still sealed is shown as."""
        self.unopened = unopened
        self.erased_at: datetime | None = None
        self.state: ClientState = NO_CLIENT
        self.last_position = 0
        self.registered_at: datetime | None = None
        self.unregistered_at: datetime | None = None
        self.unregister_reason: str | None = None
        self.notifications: dict[str, NotificationState] = {}

    def apply(self, position: int, event: Event) -> None:
        self.last_position = position
        match event:
            case ClientRegistered():
                self.state = evolve(self.state, event, version=position)
                self.registered_at = event.occurred_at
                self.unregistered_at = self.unregister_reason = None
            case ClientUnregistered():
                self.state = evolve(self.state, event, version=position)
                self.unregistered_at = event.occurred_at
                self.unregister_reason = event.reason
            case ClientErased():
                if self.state.registered:
                    self.unregistered_at = event.occurred_at
                    self.unregister_reason = "erased"
                self.state = evolve(self.state, event, version=position)
                self.erased_at = event.occurred_at
            case (
                NotificationAccepted()
                | NotificationDropped()
                | NotificationDuplicate()
                | NotificationDelivered()
                | NotificationDeliveryFailed()
            ):
                known = self.notifications.get(event.message_id, NotificationState())
                self.notifications[event.message_id] = delivery.evolve(known, event)
            case _:
                pass  # inbox reads change nothing shown

    def snapshot(
        self,
        tenant_id: str,
        client_id: str,
        *,
        at_position: int | None = None,
        at_time: datetime | None = None,
    ) -> ClientSnapshot:
        def ids(status: Status) -> NotificationIds:
            found = [m for m, s in self.notifications.items() if s.status == status]
            return NotificationIds(count=len(found), ids=found)

        state = self.state
        token_fingerprint = (
            self.unopened
            if state.sealed is not None
            else fingerprint(state.token)
            if state.token
            else None
        )
        return ClientSnapshot(
            tenant_id=tenant_id,
            client_id=client_id,
            at_position=at_position,
            at_time=at_time,
            last_event_position=self.last_position,
            registered=state.registered,
            provider=state.provider,
            token_fingerprint=token_fingerprint,
            always_raw=state.always_raw,
            registered_at=self.registered_at if state.registered else None,
            unregistered_at=None if state.registered else self.unregistered_at,
            unregister_reason=None if state.registered else self.unregister_reason,
            pending=ids("pending"),
            delivered=ids("delivered"),
            failed=ids("failed"),
            dropped=ids("dropped"),
            erased_at=self.erased_at,
            expired=ids("expired"),
        )


def parse_time(text: str, *, field: str) -> datetime:
    """An ISO 8601 time; one without a time zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueryError(field, f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_at(text: str, *, field: str = "at") -> int | datetime:
    """A position (digits) or an ISO 8601 time."""
    if _POSITION.fullmatch(text.strip()):
        return int(text)
    return parse_time(text, field=field)


async def client_state_at(
    log: EventLog,
    tenant_id: str,
    client_id: str,
    at: int | datetime | None = None,
    *,
    sealer: Sealer | None = None,
) -> ClientSnapshot:
    """The client's state after every event up to position ``at`` (inclusive), recorded at or
    before time ``at``, or (None) now; its token opened with ``sealer``."""
    at_position = at if isinstance(at, int) else None
    at_time = at if isinstance(at, datetime) else None
    if at_time is not None and at_time.tzinfo is None:
        raise QueryError("at", "must carry a time zone")
    fold = ClientFold(unopened="sealed" if sealer is None else "erased")
    filters: list[SubjectFilter] = [
        (tenant_id, "client", client_id),
        (tenant_id, "notification", client_id, REST),
    ]
    async with aclosing(merged_read(log, filters, to_position=at_position)) as events:
        async for record in events:
            if at_time is not None and recorded_time(record) > at_time:
                break
            try:
                event = decode_event(record.data)
            except msgspec.DecodeError:
                continue
            if sealer is not None and isinstance(event, ClientRegistered):
                event = await sealer.open(event)
            fold.apply(record.position, event)
    return fold.snapshot(tenant_id, client_id, at_position=at_position, at_time=at_time)
