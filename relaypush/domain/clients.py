"""A client's lifecycle and what happens to a push sent to it: fold, then decide.

State is folded from the client's *last* lifecycle event: ``client.registered`` carries the
whole state (type, token, always_raw), ``client.unregistered`` and ``client.erased`` clear it, so
no earlier event can change the outcome. Each ``decide_*`` function is pure: it takes the state,
the command, an event id and the time, and returns the one event the command records, or raises
a domain error. Every command records exactly one event, including an unregister of an unknown
client and a push that is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, assert_never

import msgspec

from relaypush.domain.errors import ErrorInfo, FieldError, InvalidRequest
from relaypush.domain.events import (
    Cause,
    ClientCarriedForward,
    ClientErased,
    ClientRegistered,
    ClientUnregistered,
    DropReason,
    NotificationAccepted,
    NotificationDropped,
    NotificationDuplicate,
    ProviderType,
    RawMessage,
    SealedFields,
    UnregisterReason,
)
from relaypush.domain.payload import LegacyPush, RawPush, flag_names, parse_push
from relaypush.domain.provider_payload import check_payload_size
from relaypush.domain.streams import dedup_key

__all__ = [
    "NO_CLIENT",
    "ClientEvent",
    "ClientState",
    "PushDecision",
    "PushToClient",
    "RegisterClient",
    "UnregisterClient",
    "carry_forward",
    "client_state",
    "decide_erase",
    "decide_push",
    "decide_register",
    "decide_unregister",
    "evolve",
    "record_duplicate",
]

ClientEvent = ClientRegistered | ClientUnregistered | ClientErased
PushDecision = NotificationAccepted | NotificationDropped


@dataclass(frozen=True, slots=True)
class ClientState:
    """What is known of one client; ``version`` is the position of its last event (0: none).

    A registration whose token is sealed under the client's key has ``token`` None and the
    sealed token in ``sealed`` (``relaypush.privacy`` opens it)."""

    registered: bool = False
    provider: ProviderType | None = None
    token: str | None = None
    always_raw: bool = False
    version: int = 0
    sealed: SealedFields | None = None


NO_CLIENT: Final = ClientState()


@dataclass(frozen=True, slots=True)
class RegisterClient:
    """Register a client, or replace its type, token and always_raw (an upsert)."""

    tenant_id: str
    client_id: str
    provider: ProviderType
    token: str
    always_raw: bool = False
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class UnregisterClient:
    """Forget a client's token; idempotent."""

    tenant_id: str
    client_id: str
    reason: UnregisterReason = "requested"
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class PushToClient:
    """A push from the relay, as the raw request body: its shape depends on the client."""

    tenant_id: str
    client_id: str
    body: bytes
    request_id: str | None = None


def evolve(state: ClientState, event: ClientEvent, *, version: int) -> ClientState:
    """The state after ``event``, stored at ``version``."""
    match event:
        case ClientRegistered():
            return ClientState(
                registered=True,
                provider=event.provider,
                token=event.token if event.sealed is None else None,
                always_raw=event.always_raw,
                version=version,
                sealed=event.sealed,
            )
        case ClientUnregistered() | ClientErased():
            return ClientState(version=version)
        case _:
            assert_never(event)


def client_state(last: ClientEvent | None, *, version: int) -> ClientState:
    """A client's state from its last lifecycle event (None: it never had one)."""
    if last is None:
        return ClientState(version=version)
    return evolve(NO_CLIENT, last, version=version)


def carry_forward(
    registered: ClientRegistered, position: int, *, event_id: str
) -> ClientCarriedForward:
    """The registration at ``position`` carried past the log's retention: the same fields (the
    token still sealed as it was) and the same ``occurred_at``, so every reader folds it as that
    registration."""
    fields = msgspec.structs.asdict(registered)
    fields.update(event_id=event_id, carried_position=position)
    return ClientCarriedForward(**fields)


def decide_register(
    state: ClientState,
    command: RegisterClient,
    *,
    enabled: frozenset[ProviderType],
    event_id: str,
    now: datetime,
) -> ClientRegistered:
    """Register (or re-register) the client; its type must be enabled for the tenant.

    Raises ``InvalidRequest`` with error ``provider_not_available`` (field ``type``) otherwise.
    ``state`` is not consulted beyond that: registering is an upsert and is always recorded.
    """
    if command.provider not in enabled:
        what = f"push type {command.provider!r} is not configured for this tenant"
        if enabled:
            what += "; available: " + ", ".join(sorted(enabled))
        raise InvalidRequest(
            fields=(FieldError("type", what),),
            errors=(ErrorInfo("provider_not_available", what),),
        )
    return ClientRegistered(
        event_id=event_id,
        occurred_at=now,
        tenant_id=command.tenant_id,
        cause=Cause(request_id=command.request_id),
        client_id=command.client_id,
        provider=command.provider,
        token=command.token,
        always_raw=command.always_raw,
    )


def decide_unregister(
    state: ClientState, command: UnregisterClient, *, event_id: str, now: datetime
) -> ClientUnregistered:
    """Unregister the client; recorded even when it was not registered (idempotent for callers)."""
    return ClientUnregistered(
        event_id=event_id,
        occurred_at=now,
        tenant_id=command.tenant_id,
        cause=Cause(request_id=command.request_id),
        client_id=command.client_id,
        reason=command.reason,
    )


def decide_erase(
    tenant_id: str,
    client_id: str,
    *,
    key_ids: tuple[str, ...],
    request_id: str | None,
    event_id: str,
    now: datetime,
) -> ClientErased:
    """Record an erasure once the client is unregistered and its keys (``key_ids``) destroyed;
    recorded even for a client that never existed, so the request itself is on record."""
    return ClientErased(
        event_id=event_id,
        occurred_at=now,
        tenant_id=tenant_id,
        cause=Cause(request_id=request_id),
        client_id=client_id,
        key_ids=key_ids,
    )


def _parse(state: ClientState, body: bytes) -> LegacyPush | RawPush:
    """The push in ``body``, read the way the client expects it.

    A client that is not registered has no known shape: either a legacy or a raw body is
    accepted (so that the drop can be recorded under its message id), and when neither fits the
    legacy form's errors are reported.
    """
    if state.registered:
        return parse_push(body, always_raw=state.always_raw)
    try:
        return parse_push(body, always_raw=False)
    except InvalidRequest as legacy_error:
        try:
            return parse_push(body, always_raw=True)
        except InvalidRequest:
            raise legacy_error from None


def decide_push(
    state: ClientState,
    command: PushToClient,
    *,
    event_id: str,
    now: datetime,
) -> PushDecision:
    """Accept a push for delivery, or drop it; malformed pushes raise ``InvalidRequest``.

    Shape comes before state: a body that cannot be read, or whose provider payload would be
    over the provider's limit, is refused whatever the client or tenant. Then a client that is
    not registered drops it (``client_not_registered``). A push for a suspended tenant is
    accepted like any other: the dispatcher holds it until the tenant is un-suspended
    (:mod:`relaypush.domain.delivery`). Deduplication is not decided here: the accepted event
    carries its ``dedup_key`` (see :func:`record_duplicate`).
    """
    push = _parse(state, command.body)
    cause = Cause(request_id=command.request_id, message_id=push.message_id)
    tenant_id, client_id = command.tenant_id, command.client_id
    if not state.registered:
        return _dropped(command, push.message_id, "client_not_registered", event_id, now, cause)
    accepted = _accepted(tenant_id, client_id, push, event_id=event_id, now=now, cause=cause)
    assert state.provider is not None
    check_payload_size(accepted, state.provider)
    return accepted


def _dropped(
    command: PushToClient,
    message_id: str,
    reason: DropReason,
    event_id: str,
    now: datetime,
    cause: Cause,
) -> NotificationDropped:
    return NotificationDropped(
        event_id=event_id,
        occurred_at=now,
        tenant_id=command.tenant_id,
        cause=cause,
        client_id=command.client_id,
        message_id=message_id,
        reason=reason,
    )


def _accepted(
    tenant_id: str,
    client_id: str,
    push: LegacyPush | RawPush,
    *,
    event_id: str,
    now: datetime,
    cause: Cause,
) -> NotificationAccepted:
    key = dedup_key(tenant_id, client_id, push.message_id)
    match push:
        case LegacyPush():
            return NotificationAccepted(
                event_id=event_id,
                occurred_at=now,
                tenant_id=tenant_id,
                cause=cause,
                client_id=client_id,
                message_id=push.message_id,
                dedup_key=key,
                topic=push.topic,
                flags=push.flags,
                flag_names=flag_names(push.flags),
                encrypted=push.encrypted,
                blob=push.blob,
                notify=push.notify,
            )
        case RawPush():
            return NotificationAccepted(
                event_id=event_id,
                occurred_at=now,
                tenant_id=tenant_id,
                cause=cause,
                client_id=client_id,
                message_id=push.message_id,
                dedup_key=key,
                topic=push.topic,
                raw=RawMessage(topic=push.topic, tag=push.tag, message=push.message),
            )
        case _:
            assert_never(push)


def record_duplicate(
    accepted: NotificationAccepted, *, event_id: str, now: datetime
) -> NotificationDuplicate:
    """The event recording that ``accepted`` arrived again after an earlier copy was accepted."""
    return NotificationDuplicate(
        event_id=event_id,
        occurred_at=now,
        tenant_id=accepted.tenant_id,
        cause=accepted.cause,
        client_id=accepted.client_id,
        message_id=accepted.message_id,
        dedup_key=accepted.dedup_key,
    )
