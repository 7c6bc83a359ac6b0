"""A tenant's lifecycle folded from its events, and the pure decisions of the tenant API.

Everything that happens to a tenant is an event on its ``(tenant, "tenant")`` subject::

    tenant.created               exists, with no credentials (again, after a deletion)
    tenant.credentials_changed   APNs, FCM or VAPID credentials set: a fingerprint, never the secret
    tenant.credentials_removed   APNs, FCM or VAPID credentials gone
    tenant.suspended             a provider refused the credentials: nothing is delivered
    tenant.unsuspended           a credential change lifted the suspension
    tenant.deleted               gone: its clients and pushes are refused as an unknown tenant

:func:`fold` reads them into a :class:`TenantState`. A deletion ends an *incarnation*: a tenant
created again under the same id starts empty, and ``epoch`` (the position of the event that began
the current incarnation) lets the caller forget clients registered before it. The default tenant
exists without ever being created (``always_exists``): its credentials come from the settings.

Each ``decide_*`` function is pure: state and command in, the events to append (possibly none)
out, or a domain error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, assert_never

from relaypush.domain.errors import DomainError, FieldError, InvalidRequest, Unauthorized
from relaypush.domain.events import (
    ApnsType,
    CarriedCredential,
    Cause,
    CredentialKind,
    Event,
    ProviderType,
    TenantCarriedForward,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantDeleted,
    TenantSuspended,
    TenantUnsuspended,
)

__all__ = [
    "ADMIN",
    "CREDENTIAL_KIND",
    "CREDENTIAL_KINDS",
    "RESERVED_TENANT_IDS",
    "TENANT_EVENT_TYPES",
    "ApnsConfig",
    "Caller",
    "CredentialChange",
    "FcmConfig",
    "TenantEvent",
    "TenantNotFound",
    "TenantState",
    "WebPushConfig",
    "carry_forward",
    "configured_providers",
    "decide_create",
    "decide_credentials",
    "decide_delete",
    "decide_remove",
    "decide_unsuspend",
    "enabled_providers",
    "evolve",
    "fold",
    "unknown_tenant",
]

TenantEvent = (
    TenantCreated
    | TenantCredentialsChanged
    | TenantCredentialsRemoved
    | TenantSuspended
    | TenantUnsuspended
    | TenantDeleted
    | TenantCarriedForward
)
TENANT_EVENT_TYPES: Final = (
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantSuspended,
    TenantUnsuspended,
    TenantDeleted,
    TenantCarriedForward,
)
CREDENTIAL_KINDS: Final[tuple[CredentialKind, ...]] = ("apns", "fcm_v1", "webpush")
#: Which of a tenant's credentials serves each client type (``noop`` needs none).
CREDENTIAL_KIND: Final[Mapping[ProviderType, CredentialKind]] = {
    "apns": "apns",
    "apns-sandbox": "apns",
    "fcm": "fcm_v1",
    "webpush": "webpush",
}

#: Ids that would make a tenant's client routes collide with the server's own top-level routes.
RESERVED_TENANT_IDS: Final = frozenset({"tenants", "clients", "health", "metrics", "schema"})


class TenantNotFound(DomainError):
    """No tenant with this id exists (never created, or deleted): HTTP 404 on tenant routes."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        super().__init__(f"no tenant {tenant_id!r}")


def unknown_tenant(tenant_id: str) -> InvalidRequest:
    """The 400 a client route answers for a tenant that does not exist (field in the path)."""
    what = f"no tenant {tenant_id!r}: create it with POST /tenants first"
    return InvalidRequest(fields=(FieldError("tenant_id", what, "path"),))


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    """What is public about a tenant's APNs credentials."""

    fingerprint: str
    topic: str | None
    type: ApnsType | None


@dataclass(frozen=True, slots=True)
class FcmConfig:
    """What is public about a tenant's FCM service account."""

    fingerprint: str
    project_id: str | None


@dataclass(frozen=True, slots=True)
class WebPushConfig:
    """What is public about a tenant's VAPID key pair: its public key."""

    fingerprint: str
    public_key: str | None


@dataclass(frozen=True, slots=True)
class TenantState:
    """A tenant as its events leave it; ``version`` is the position of its last event (0: none).

    ``epoch`` is the position of the event that began the current incarnation (its creation, or
    its deletion): a client whose last event is older belongs to an earlier incarnation.
    """

    exists: bool = False
    deleted: bool = False
    #: when the tenant was deleted, while it is
    deleted_at: datetime | None = None
    suspended: bool = False
    suspended_reason: str | None = None
    apns: ApnsConfig | None = None
    fcm: FcmConfig | None = None
    webpush: WebPushConfig | None = None
    epoch: int = 0
    version: int = 0

    def fingerprint(self, kind: CredentialKind) -> str | None:
        """The fingerprint of the tenant's credential of ``kind``, None when there is none."""
        config: ApnsConfig | FcmConfig | WebPushConfig | None
        match kind:
            case "apns":
                config = self.apns
            case "fcm_v1":
                config = self.fcm
            case "webpush":
                config = self.webpush
        return config.fingerprint if config is not None else None


@dataclass(frozen=True, slots=True)
class CredentialChange:
    """Checked credentials about to be stored: their kind, fingerprint and public details."""

    kind: CredentialKind
    fingerprint: str
    apns_topic: str | None = None
    apns_type: ApnsType | None = None
    fcm_project_id: str | None = None
    vapid_public_key: str | None = None


def evolve(state: TenantState, event: TenantEvent, *, position: int) -> TenantState:
    """The state after ``event``, stored at ``position``."""
    match event:
        case TenantCreated():
            if state.exists:
                return replace(state, version=position)
            return TenantState(exists=True, epoch=position, version=position)
        case TenantCredentialsChanged():
            if event.kind == "apns":
                apns = ApnsConfig(event.fingerprint, event.apns_topic, event.apns_type)
                return replace(state, apns=apns, version=position)
            if event.kind == "webpush":
                webpush = WebPushConfig(event.fingerprint, event.vapid_public_key)
                return replace(state, webpush=webpush, version=position)
            fcm = FcmConfig(event.fingerprint, event.fcm_project_id)
            return replace(state, fcm=fcm, version=position)
        case TenantCredentialsRemoved():
            if event.kind == "apns":
                return replace(state, apns=None, version=position)
            if event.kind == "webpush":
                return replace(state, webpush=None, version=position)
            return replace(state, fcm=None, version=position)
        case TenantSuspended():
            return replace(state, suspended=True, suspended_reason=event.reason, version=position)
        case TenantUnsuspended():
            return replace(state, suspended=False, suspended_reason=None, version=position)
        case TenantDeleted():
            return TenantState(
                deleted=True, deleted_at=event.occurred_at, epoch=position, version=position
            )
        case TenantCarriedForward():
            return _carried_state(event, position)
        case _:
            assert_never(event)


def _carried_state(event: TenantCarriedForward, position: int) -> TenantState:
    carried = {c.kind: c for c in event.credentials}
    a, f, w = carried.get("apns"), carried.get("fcm_v1"), carried.get("webpush")
    return TenantState(
        exists=event.exists,
        deleted=event.deleted,
        deleted_at=event.deleted_at,
        suspended=event.suspended,
        suspended_reason=event.suspended_reason,
        apns=ApnsConfig(a.fingerprint, a.apns_topic, a.apns_type) if a else None,
        fcm=FcmConfig(f.fingerprint, f.fcm_project_id) if f else None,
        webpush=WebPushConfig(w.fingerprint, w.vapid_public_key) if w else None,
        epoch=event.epoch,
        version=position,
    )


def carry_forward(
    state: TenantState,
    tenant_id: str,
    *,
    created_at: datetime | None,
    event_id: str,
    now: datetime,
) -> TenantCarriedForward:
    """The event that carries ``state`` (folded up to ``state.version``) past the log's
    retention: folding from it gives ``state`` again."""
    credentials: list[CarriedCredential] = []
    if state.apns is not None:
        credentials.append(
            CarriedCredential(
                kind="apns",
                fingerprint=state.apns.fingerprint,
                apns_topic=state.apns.topic,
                apns_type=state.apns.type,
            )
        )
    if state.fcm is not None:
        credentials.append(
            CarriedCredential(
                kind="fcm_v1",
                fingerprint=state.fcm.fingerprint,
                fcm_project_id=state.fcm.project_id,
            )
        )
    if state.webpush is not None:
        credentials.append(
            CarriedCredential(
                kind="webpush",
                fingerprint=state.webpush.fingerprint,
                vapid_public_key=state.webpush.public_key,
            )
        )
    return TenantCarriedForward(
        event_id=event_id,
        occurred_at=now,
        tenant_id=tenant_id,
        carried_position=state.version,
        exists=state.exists,
        deleted=state.deleted,
        suspended=state.suspended,
        suspended_reason=state.suspended_reason,
        credentials=tuple(credentials),
        epoch=state.epoch,
        created_at=created_at,
        deleted_at=state.deleted_at,
    )


def fold(
    events: Iterable[tuple[int, TenantEvent]],
    *,
    always_exists: bool = False,
    state: TenantState | None = None,
) -> TenantState:
    """Fold ``(position, event)`` pairs onto ``state`` (default: a tenant with no events).

    ``always_exists`` marks the default tenant, which exists without a ``tenant.created``.
    """
    current = state if state is not None else TenantState(exists=always_exists)
    for position, event in events:
        current = evolve(current, event, position=position)
    return current


def enabled_providers(state: TenantState) -> frozenset[ProviderType]:
    """The client types a tenant may register: ``noop`` always, the rest as configured."""
    return frozenset({"noop", *configured_providers(state)})


def configured_providers(state: TenantState) -> tuple[ProviderType, ...]:
    """The real providers a tenant's credentials enable, in a stable order."""
    enabled: list[ProviderType] = []
    if state.apns is not None:
        enabled += ["apns", "apns-sandbox"]
    if state.fcm is not None:
        enabled.append("fcm")
    if state.webpush is not None:
        enabled.append("webpush")
    return tuple(enabled)


def _cause(request_id: str | None) -> Cause:
    return Cause(request_id=request_id)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks for a tenant change: the operator (the admin token), or the tenant itself with
    a JWT issued at ``issued_at`` (None: the JWT has no ``iat``)."""

    admin: bool
    issued_at: datetime | None = None


ADMIN: Final = Caller(admin=True)


def decide_create(
    state: TenantState,
    tenant_id: str,
    *,
    event_id: str,
    now: datetime,
    request_id: str | None,
    caller: Caller = ADMIN,
) -> TenantCreated | None:
    """Create the tenant; None when it already exists (creating is an upsert).

    A deleted tenant is created again by the admin, or by a tenant JWT issued after the
    deletion; a JWT issued before it (or without ``iat``) raises ``Unauthorized``, so that
    deleting a tenant also revokes the tokens that were handed out for it.
    """
    if state.exists:
        return None
    if state.deleted and not caller.admin:
        deleted_at = state.deleted_at
        issued_at = caller.issued_at
        if issued_at is None or (deleted_at is not None and issued_at <= deleted_at):
            when = f"at {issued_at.isoformat()}" if issued_at is not None else "without 'iat'"
            raise Unauthorized(
                fields=(
                    FieldError(
                        "Authorization",
                        f"the tenant was deleted and this JWT was issued {when}, not after the "
                        "deletion: only the admin token or a JWT issued since may create it again",
                        "header",
                    ),
                )
            )
    return TenantCreated(
        event_id=event_id, occurred_at=now, tenant_id=tenant_id, cause=_cause(request_id)
    )


def decide_delete(
    state: TenantState, tenant_id: str, *, event_id: str, now: datetime, request_id: str | None
) -> TenantDeleted | None:
    """Delete the tenant; None when there is nothing to delete (deleting is idempotent)."""
    if not state.exists:
        return None
    return TenantDeleted(
        event_id=event_id, occurred_at=now, tenant_id=tenant_id, cause=_cause(request_id)
    )


def decide_credentials(
    state: TenantState,
    tenant_id: str,
    change: CredentialChange,
    *,
    event_ids: tuple[str, str],
    now: datetime,
    request_id: str | None,
) -> tuple[Event, ...]:
    """Record a credential change, and lift a suspension if there is one.

    Raises :class:`TenantNotFound` when the tenant does not exist.
    """
    if not state.exists:
        raise TenantNotFound(tenant_id)
    cause = _cause(request_id)
    changed = TenantCredentialsChanged(
        event_id=event_ids[0],
        occurred_at=now,
        tenant_id=tenant_id,
        cause=cause,
        kind=change.kind,
        fingerprint=change.fingerprint,
        apns_topic=change.apns_topic,
        apns_type=change.apns_type,
        fcm_project_id=change.fcm_project_id,
        vapid_public_key=change.vapid_public_key,
    )
    if not state.suspended:
        return (changed,)
    lifted = TenantUnsuspended(
        event_id=event_ids[1], occurred_at=now, tenant_id=tenant_id, cause=cause
    )
    return (changed, lifted)


def decide_unsuspend(
    state: TenantState, tenant_id: str, *, event_id: str, now: datetime, request_id: str | None
) -> TenantUnsuspended | None:
    """Lift the tenant's suspension; None when it is not suspended (idempotent).

    Raises :class:`TenantNotFound` when the tenant does not exist.
    """
    if not state.exists:
        raise TenantNotFound(tenant_id)
    if not state.suspended:
        return None
    return TenantUnsuspended(
        event_id=event_id, occurred_at=now, tenant_id=tenant_id, cause=_cause(request_id)
    )


def decide_remove(
    state: TenantState,
    tenant_id: str,
    kind: CredentialKind,
    *,
    event_id: str,
    now: datetime,
    request_id: str | None,
) -> TenantCredentialsRemoved | None:
    """Remove the tenant's credential of ``kind``; None when it has none.

    Raises :class:`TenantNotFound` when the tenant does not exist.
    """
    if not state.exists:
        raise TenantNotFound(tenant_id)
    if state.fingerprint(kind) is None:
        return None
    return TenantCredentialsRemoved(
        event_id=event_id, occurred_at=now, tenant_id=tenant_id, cause=_cause(request_id), kind=kind
    )
