"""Where each event lives in the log: one subject per aggregate instance.

    (tenant, "client", client_id)                           client.registered, unregistered, erased
    (tenant, "notification", client_id, message_id, kind)   one subject per outcome kind
    (tenant, "inbox", client_id)                            inbox.read
    (tenant, "tenant")                                      tenant.*
    ("$audit", "checkpoint")                                audit.checkpoint

A notification's outcomes sit on sibling subjects (``accepted``, ``duplicate``, ``dropped``,
``delivered``, ``failed``) so that the dispatcher can filter on accepted notifications alone, and
so that ``accepted`` holds at most one event: appending it with expected version 0 is the
permanent deduplication guard. The event log encodes every token, so ids may hold any character.
"""

from __future__ import annotations

import hashlib
from typing import Literal

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
    "NotificationKind",
    "client_subject",
    "dedup_key",
    "inbox_subject",
    "notification_subject",
    "subject_for",
    "tenant_subject",
]

AUDIT_CHECKPOINT_SUBJECT: tuple[str, ...] = (AUDIT_TENANT, "checkpoint")
"""Where the audit chain's signed checkpoints are appended, with expected versions."""

NotificationKind = Literal["accepted", "duplicate", "dropped", "delivered", "failed"]

CLIENT = "client"
NOTIFICATION = "notification"
INBOX = "inbox"
TENANT = "tenant"


def client_subject(tenant_id: str, client_id: str) -> tuple[str, ...]:
    return (tenant_id, CLIENT, client_id)


def notification_subject(
    tenant_id: str, client_id: str, message_id: str, kind: NotificationKind
) -> tuple[str, ...]:
    return (tenant_id, NOTIFICATION, client_id, message_id, kind)


def inbox_subject(tenant_id: str, client_id: str) -> tuple[str, ...]:
    return (tenant_id, INBOX, client_id)


def tenant_subject(tenant_id: str) -> tuple[str, ...]:
    return (tenant_id, TENANT)


def dedup_key(tenant_id: str, client_id: str, message_id: str) -> str:
    """The idempotency key of a notification: (tenant, client, message id), hashed."""
    joined = "\x00".join((tenant_id, client_id, message_id)).encode()
    return hashlib.sha256(joined).hexdigest()


def subject_for(event: Event) -> tuple[str, ...]:
    """The subject ``event`` is stored under."""
    t = event.tenant_id
    match event:
        case ClientRegistered() | ClientUnregistered() | ClientErased():
            return client_subject(t, event.client_id)
        case NotificationAccepted():
            return notification_subject(t, event.client_id, event.message_id, "accepted")
        case NotificationDuplicate():
            return notification_subject(t, event.client_id, event.message_id, "duplicate")
        case NotificationDropped():
            return notification_subject(t, event.client_id, event.message_id, "dropped")
        case NotificationDelivered():
            return notification_subject(t, event.client_id, event.message_id, "delivered")
        case NotificationDeliveryFailed():
            return notification_subject(t, event.client_id, event.message_id, "failed")
        case InboxRead():
            return inbox_subject(t, event.client_id)
        case AuditCheckpoint():
            return AUDIT_CHECKPOINT_SUBJECT
        case _:
            return tenant_subject(t)
