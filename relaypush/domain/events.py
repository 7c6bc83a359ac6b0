"""The event catalogue: every fact relaypush records, as frozen tagged msgspec Structs.

Tags are stable strings and never change; a schema change adds an optional field or a new tag.
``docs/events.md`` lists the same catalogue and a test keeps the two in step.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

__all__ = [
    "AUDIT_TENANT",
    "EVENT_TYPES",
    "ApnsType",
    "AuditCheckpoint",
    "CarriedCredential",
    "Cause",
    "ClientCarriedForward",
    "ClientErased",
    "ClientRegistered",
    "ClientUnregistered",
    "CredentialKind",
    "Event",
    "InboxRead",
    "NotificationAccepted",
    "NotificationDelivered",
    "NotificationDeliveryFailed",
    "NotificationDropped",
    "NotificationDuplicate",
    "NotifyMessage",
    "ProviderType",
    "RawMessage",
    "SealedFields",
    "TenantCarriedForward",
    "TenantCreated",
    "TenantCredentialsChanged",
    "TenantCredentialsRemoved",
    "TenantDeleted",
    "TenantSuspended",
    "TenantUnsuspended",
    "UnregisterReason",
    "decode_event",
    "encode_event",
]

ProviderType = Literal["apns", "apns-sandbox", "fcm", "noop", "webpush"]
UnregisterReason = Literal[
    "requested", "token_invalid", "token_foreign", "superseded", "tenant_deleted", "erased"
]
DropReason = Literal["client_not_registered", "tenant_suspended"]
CredentialKind = Literal["apns", "fcm_v1", "webpush"]
ApnsType = Literal["token", "certificate"]


class Cause(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What led to an event: the HTTP request, the relay's message id, an earlier event."""

    request_id: str | None = None
    message_id: str | None = None
    position: int | None = None


class NotifyMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The cleartext Notify message carried base64-encoded in an unencrypted blob."""

    title: str
    body: str
    icon: str | None = None
    url: str | None = None
    type: str | None = None


class RawMessage(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a push to an ``always_raw`` client."""

    topic: str
    tag: int
    message: str


class SealedFields(msgspec.Struct, frozen=True, kw_only=True):
    """An event's personal fields, encrypted under its client's own key (AES-256-GCM).

    ``key_id`` names the client's key, ``ciphertext`` holds the fields as compact JSON (see
    :mod:`relaypush.domain.personal`) with the GCM tag. Destroying the key (erasing the client)
    leaves these bytes in the log, unreadable.
    """

    key_id: str
    nonce: bytes
    ciphertext: bytes


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries."""

    event_id: str
    occurred_at: datetime
    tenant_id: str
    cause: Cause = Cause()


class ClientRegistered(Event, frozen=True, kw_only=True, tag="client.registered"):
    """A client was registered. ``token`` is empty when ``sealed`` holds it."""

    client_id: str
    provider: ProviderType
    token: str
    always_raw: bool = False
    sealed: SealedFields | None = None


class ClientCarriedForward(
    ClientRegistered, frozen=True, kw_only=True, tag="client.carried_forward"
):
    """A registration carried forward before the log's retention drops it: the same client,
    type, token (sealed as it was) and options as the registration at ``carried_position``, and
    its ``occurred_at``. Everything that reads registrations reads it as one; nothing changed."""

    carried_position: int


class ClientUnregistered(Event, frozen=True, kw_only=True, tag="client.unregistered"):
    client_id: str
    reason: UnregisterReason


class ClientErased(Event, frozen=True, kw_only=True, tag="client.erased"):
    """The client was erased on request: its key is destroyed, so the personal fields sealed
    under it (its device token, its notifications' content) can no longer be read. Leaves the
    client unregistered; carries no personal data. ``key_ids`` names the keys destroyed."""

    client_id: str
    key_ids: tuple[str, ...] = ()


class NotificationAccepted(Event, frozen=True, kw_only=True, tag="notification.accepted"):
    """A push passed validation and will be delivered.

    Legacy pushes carry ``topic``, ``flags`` and ``blob`` (and ``notify`` when the blob is a
    cleartext Notify message); raw pushes carry ``raw``. ``message_id`` is the relay's id, or the
    SHA-256 of the raw message. When ``sealed`` is set it holds the cleartext blob, the Notify
    message and the raw message, and those fields are empty here (``raw`` keeps its topic and
    tag); an encrypted blob is never sealed.
    """

    client_id: str
    message_id: str
    dedup_key: str
    topic: str
    flags: int = 0
    flag_names: tuple[str, ...] = ()
    encrypted: bool = False
    blob: str | None = None
    notify: NotifyMessage | None = None
    raw: RawMessage | None = None
    sealed: SealedFields | None = None


class NotificationDuplicate(Event, frozen=True, kw_only=True, tag="notification.duplicate"):
    client_id: str
    message_id: str
    dedup_key: str


class NotificationDropped(Event, frozen=True, kw_only=True, tag="notification.dropped"):
    client_id: str
    message_id: str
    reason: DropReason


class NotificationDelivered(Event, frozen=True, kw_only=True, tag="notification.delivered"):
    client_id: str
    message_id: str
    provider: ProviderType
    provider_id: str | None
    attempt: int
    latency_ms: float


class NotificationDeliveryFailed(
    Event, frozen=True, kw_only=True, tag="notification.delivery_failed"
):
    client_id: str
    message_id: str
    provider: ProviderType | None
    attempt: int
    permanent: bool
    reason: str
    next_attempt_at: datetime | None = None


class InboxRead(Event, frozen=True, kw_only=True, tag="inbox.read"):
    client_id: str
    message_ids: tuple[str, ...]


class TenantCreated(Event, frozen=True, kw_only=True, tag="tenant.created"):
    pass


class TenantCredentialsChanged(Event, frozen=True, kw_only=True, tag="tenant.credentials_changed"):
    """Which credential changed and its fingerprint: never the secret itself.

    The optional fields carry what is public about the credential, so that the tenant's
    configuration can be read from its events alone: the APNs topic (the app's bundle id) and
    whether APNs authenticates with a token key or a certificate, the FCM project id, or the
    VAPID public key (base64url of the uncompressed P-256 point, as ``pushManager.subscribe``
    takes it).
    """

    kind: CredentialKind
    fingerprint: str
    apns_topic: str | None = None
    apns_type: ApnsType | None = None
    fcm_project_id: str | None = None
    vapid_public_key: str | None = None


class TenantCredentialsRemoved(Event, frozen=True, kw_only=True, tag="tenant.credentials_removed"):
    kind: CredentialKind


class TenantSuspended(Event, frozen=True, kw_only=True, tag="tenant.suspended"):
    """A provider proved the tenant's credentials wrong. ``provider`` and ``fingerprint`` name
    the credentials it refused (absent from events of earlier releases)."""

    reason: str
    provider: ProviderType | None = None
    fingerprint: str | None = None


class TenantUnsuspended(Event, frozen=True, kw_only=True, tag="tenant.unsuspended"):
    pass


class TenantDeleted(Event, frozen=True, kw_only=True, tag="tenant.deleted"):
    pass


class CarriedCredential(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a tenant's events say of one of its credentials (its public details only)."""

    kind: CredentialKind
    fingerprint: str
    apns_topic: str | None = None
    apns_type: ApnsType | None = None
    fcm_project_id: str | None = None
    vapid_public_key: str | None = None


class TenantCarriedForward(Event, frozen=True, kw_only=True, tag="tenant.carried_forward"):
    """A tenant's state as its events up to ``carried_position`` left it, appended before the
    log's retention drops them; folding starts again from here. ``epoch`` is the position that
    began the tenant's incarnation (its creation or deletion)."""

    carried_position: int
    exists: bool
    deleted: bool = False
    suspended: bool = False
    suspended_reason: str | None = None
    credentials: tuple[CarriedCredential, ...] = ()
    epoch: int = 0
    created_at: datetime | None = None
    deleted_at: datetime | None = None


AUDIT_TENANT = "$audit"
"""The ``tenant_id`` of audit events: not a valid tenant id, so no tenant's history holds them."""


class AuditCheckpoint(Event, frozen=True, kw_only=True, tag="audit.checkpoint"):
    """A signed checkpoint of the hash chain over the log (see ``relaypush.audit.chain``).

    ``head`` is the chain link (hex SHA-256) at ``covered_to``; ``digests`` holds, for each
    position from ``covered_from`` to ``covered_to``, the event's 8-byte leaf (SHA-256 of the
    SHA-256 of its stored bytes and its subject, cut), so a verifier can name the event that
    broke the chain. ``signature`` is the hex Ed25519 signature, by the key named ``key_id``,
    over the canonical encoding of the other fields.
    """

    covered_from: int
    covered_to: int
    head: str
    digests: bytes
    key_id: str
    signature: str


AnyEvent = (
    ClientCarriedForward
    | ClientRegistered
    | ClientUnregistered
    | ClientErased
    | NotificationAccepted
    | NotificationDuplicate
    | NotificationDropped
    | NotificationDelivered
    | NotificationDeliveryFailed
    | InboxRead
    | TenantCreated
    | TenantCredentialsChanged
    | TenantCredentialsRemoved
    | TenantSuspended
    | TenantUnsuspended
    | TenantDeleted
    | TenantCarriedForward
    | AuditCheckpoint
)

EVENT_TYPES: tuple[type[Event], ...] = (
    ClientRegistered,
    ClientCarriedForward,
    ClientUnregistered,
    ClientErased,
    NotificationAccepted,
    NotificationDuplicate,
    NotificationDropped,
    NotificationDelivered,
    NotificationDeliveryFailed,
    InboxRead,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantSuspended,
    TenantUnsuspended,
    TenantDeleted,
    TenantCarriedForward,
    AuditCheckpoint,
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    """The bytes stored in the log for ``event``."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    """Decode stored bytes back into an event; raises ``msgspec.ValidationError`` if unknown."""
    return _decoder.decode(data)
