"""Where each event lives in the log: subjects bounded by tenants and clients.

    (tenant, "client", client_id)                        client.registered, unregistered, erased
    (tenant, "notification", client_id, kind)            a client's notifications, one subject
                                                         per outcome kind
    (tenant, "inbox", client_id)                         inbox.read
    (tenant, "tenant")                                   tenant.*
    ("$audit", "checkpoint")                             audit.checkpoint

The number of distinct subjects grows with tenants and clients, never with notifications: the
event log's server keeps state for every subject, so a subject per notification would cost memory
for every notification ever accepted. A client's notifications share five subjects, one per kind
(``accepted``, ``duplicate``, ``dropped``, ``delivered``, ``failed``), so that the dispatcher can
follow accepted notifications alone and a client's history is a handful of filtered reads.

Logs written before this scheme hold a notification's events on subjects of its own,
``(tenant, "notification", client_id, message_id, kind)`` (:func:`legacy_notification_subject`):
readers take both shapes (five tokens for the old one, four for the new), nothing is appended to
the old shape any more. Deduplication is not a property of the subjects (see
``relaypush.service``). The event log encodes every token, so ids may hold any character.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, get_args

from relaypush.domain.events import (
    AUDIT_TENANT,
    AuditCheckpoint,
    ClientErased,
    ClientRegistered,
    ClientUnregistered,
    Event,
    InboxRead,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
)

__all__ = [
    "AUDIT_CHECKPOINT_SUBJECT",
    "CLIENT",
    "INBOX",
    "NOTIFICATION",
    "NOTIFICATION_KINDS",
    "TENANT",
    "NotificationKind",
    "client_subject",
    "dedup_key",
    "delivered_key",
    "inbox_subject",
    "is_legacy_notification_subject",
    "legacy_notification_subject",
    "notification_subject",
    "subject_for",
    "tenant_subject",
]

AUDIT_CHECKPOINT_SUBJECT: tuple[str, ...] = (AUDIT_TENANT, "checkpoint")
"""Where the audit chain's signed checkpoints are appended, with expected versions."""

NotificationKind = Literal["accepted", "duplicate", "dropped", "delivered", "failed"]
NOTIFICATION_KINDS: Final[tuple[NotificationKind, ...]] = get_args(NotificationKind)

CLIENT: Final = "client"
NOTIFICATION: Final = "notification"
INBOX: Final = "inbox"
TENANT: Final = "tenant"


def client_subject(tenant_id: str, client_id: str) -> tuple[str, ...]:
    return (tenant_id, CLIENT, client_id)


def notification_subject(tenant_id: str, client_id: str, kind: NotificationKind) -> tuple[str, ...]:
    """The subject of one kind of event of all of a client's notifications."""
    return (tenant_id, NOTIFICATION, client_id, kind)


def legacy_notification_subject(
    tenant_id: str, client_id: str, message_id: str, kind: NotificationKind
) -> tuple[str, ...]:
    """Where logs written before the per-client scheme hold one notification's ``kind`` events."""
    return (tenant_id, NOTIFICATION, client_id, message_id, kind)


def is_legacy_notification_subject(subject: tuple[str, ...]) -> bool:
    """Whether ``subject`` is a per-message notification subject of the old scheme."""
    return len(subject) == 5 and subject[1] == NOTIFICATION


def inbox_subject(tenant_id: str, client_id: str) -> tuple[str, ...]:
    return (tenant_id, INBOX, client_id)


def tenant_subject(tenant_id: str) -> tuple[str, ...]:
    return (tenant_id, TENANT)


def dedup_key(tenant_id: str, client_id: str, message_id: str) -> str:
    """The idempotency key of a notification: (tenant, client, message id), hashed."""
    joined = "\x00".join((tenant_id, client_id, message_id)).encode()
    return hashlib.sha256(joined).hexdigest()


def delivered_key(dedup: str) -> str:
    """The idempotency key of a notification's ``notification.delivered`` (its dedup key's)."""
    return f"delivered:{dedup}"


def subject_for(event: Event) -> tuple[str, ...]:
    """The subject ``event`` is stored under."""
    t = event.tenant_id
    match event:
        case ClientRegistered() | ClientUnregistered() | ClientErased():
            return client_subject(t, event.client_id)
        case NotificationAccepted():
            return notification_subject(t, event.client_id, "accepted")
        case NotificationDuplicate():
            return notification_subject(t, event.client_id, "duplicate")
        case NotificationDropped():
            return notification_subject(t, event.client_id, "dropped")
        case NotificationDelivered():
            return notification_subject(t, event.client_id, "delivered")
        case NotificationDeliveryFailed():
            return notification_subject(t, event.client_id, "failed")
        case InboxRead():
            return inbox_subject(t, event.client_id)
        case AuditCheckpoint():
            return AUDIT_CHECKPOINT_SUBJECT
        case _:
            return tenant_subject(t)
