"""A small, realistic history for the audit tests: two tenants, clients, pushes and outcomes.

``STORY`` lists the events in the order they are appended (so position ``n`` holds
``STORY[n - 1]`` in a fresh log); the comments give those positions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from eventstore import EventLog
from relaypush.domain.events import (
    Cause,
    ClientRegistered,
    ClientUnregistered,
    Event,
    InboxRead,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    NotifyMessage,
    TenantCreated,
    encode_event,
)
from relaypush.domain.streams import subject_for

__all__ = ["DEFAULT", "STORY", "T0", "append_story", "story"]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DEFAULT = "0000-0000-0000-0000"
E = TypeVar("E", bound=Event)


def story() -> list[Event]:
    n = 0

    def ev(kind: type[E], **fields: Any) -> E:
        nonlocal n
        n += 1
        return kind(event_id=f"ev-{n}", occurred_at=T0 + timedelta(seconds=n), **fields)

    def accepted(tenant: str, client: str, message: str) -> NotificationAccepted:
        return ev(
            NotificationAccepted,
            tenant_id=tenant,
            cause=Cause(request_id=f"req-{message}", message_id=message),
            client_id=client,
            message_id=message,
            dedup_key=f"{tenant}/{client}/{message}",
            topic="topic-1",
            flags=16,
            flag_names=("notify",),
            blob="eyJ0aXRsZSI6IkhpIn0=",
            notify=NotifyMessage(title="Hi", body="there"),
        )

    def outcome(kind: type[E], tenant: str, client: str, message: str, **fields: Any) -> E:
        return ev(
            kind,
            tenant_id=tenant,
            cause=Cause(message_id=message),
            client_id=client,
            message_id=message,
            **fields,
        )

    return [
        ev(TenantCreated, tenant_id="acme"),  # 1
        ev(
            ClientRegistered,
            tenant_id="acme",
            cause=Cause(request_id="req-reg-w1"),
            client_id="w1",
            provider="fcm",
            token="device-token-w1",
        ),  # 2
        ev(
            ClientRegistered,
            tenant_id="acme",
            cause=Cause(request_id="req-reg-w2"),
            client_id="w2",
            provider="apns",
            token="device-token-w2",
        ),  # 3
        accepted("acme", "w1", "m1"),  # 4
        outcome(
            NotificationDelivered,
            "acme",
            "w1",
            "m1",
            provider="fcm",
            provider_id="p-1",
            attempt=1,
            latency_ms=3.0,
        ),  # 5
        accepted("acme", "w1", "m2"),  # 6
        outcome(
            NotificationDeliveryFailed,
            "acme",
            "w1",
            "m2",
            provider="fcm",
            attempt=1,
            permanent=False,
            reason="Unavailable",
        ),  # 7
        accepted("acme", "w2", "m3"),  # 8
        outcome(
            NotificationDeliveryFailed,
            "acme",
            "w2",
            "m3",
            provider="apns",
            attempt=1,
            permanent=True,
            reason="token_invalid: BadDeviceToken",
        ),  # 9
        outcome(NotificationDuplicate, "acme", "w1", "m1", dedup_key="acme/w1/m1"),  # 10
        outcome(NotificationDropped, "acme", "w3", "m4", reason="client_not_registered"),  # 11
        ev(InboxRead, tenant_id="acme", client_id="w1", message_ids=("m1",)),  # 12
        ev(ClientUnregistered, tenant_id="acme", client_id="w2", reason="token_invalid"),  # 13
        ev(
            ClientRegistered,
            tenant_id=DEFAULT,
            client_id="w1",
            provider="noop",
            token="device-token-default",
        ),  # 14
        accepted(DEFAULT, "w1", "m1"),  # 15
        ev(
            ClientRegistered,
            tenant_id="acme",
            client_id="w1",
            provider="fcm",
            token="device-token-w1-new",
        ),  # 16
        outcome(
            NotificationDelivered,
            "acme",
            "w1",
            "m2",
            provider="fcm",
            provider_id="p-2",
            attempt=2,
            latency_ms=5.0,
        ),  # 17
    ]


STORY = story()


async def append_story(log: EventLog, events: list[Event] | None = None) -> int:
    """Append the story (or ``events``) in order; the position of the last one."""
    last = 0
    for event in STORY if events is None else events:
        last = (await log.append(subject_for(event), encode_event(event))).position
    return last
