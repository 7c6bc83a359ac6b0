"""A notification's delivery: its states, the events that move it, and what the dispatcher does.

One place for the rules that the dispatcher, the ``messages`` read table and ``audit state`` all
follow. A notification's events fold (:func:`evolve`) into a :class:`NotificationState`:

    (nothing) ─accepted─▶ pending ─delivered──────────────▶ delivered   (final)
        │                  │  ▲ └─failed, permanent───────▶ failed      (final)
        │                  │  └─failed, retryable           expired     (final: deadline passed)
        └─dropped─▶ dropped┘ (accepted later: pending)

``delivered`` is final and wins over anything recorded after it; a permanent failure is final
too, except that a delivery recorded after it still wins (the provider did take the message).
Duplicates only count; outcomes of a notification that was never accepted change nothing (a
well-formed log has none). Retryable failures keep the notification pending, with the time of the
next attempt; a notification *held* because its tenant is suspended is pending with the reason
``tenant_suspended``.

The dispatcher loads the state, asks :func:`decide_attempt` whether to send, sends, and asks
:func:`decide_outcome` what to record for the provider's answer. Both are pure: they return the
events to append (with the expected version or idempotency key to append them with) and whether
to acknowledge the accepted event or hand it back later.

Provider answers are values (:data:`Outcome`) that providers sort their service's answers into:
who caused an error decides what it touches. A dead token or a token of another sender
unregisters that client only; an answer that proves the tenant's credentials wrong suspends the
tenant and holds its notifications until it is un-suspended or their deadline passes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Literal, assert_never

from relaypush.domain.events import (
    Cause,
    ClientUnregistered,
    Event,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    ProviderType,
    TenantSuspended,
    UnregisterReason,
)
from relaypush.domain.streams import delivered_key

__all__ = [
    "EXPIRED",
    "FINAL",
    "HELD",
    "Append",
    "Attempt",
    "CredentialsInvalid",
    "Delivered",
    "GiveUp",
    "Hold",
    "NotificationEvent",
    "NotificationState",
    "Outcome",
    "Recording",
    "Rejected",
    "Retry",
    "Send",
    "Skip",
    "Status",
    "TokenInvalid",
    "decide_attempt",
    "decide_hold",
    "decide_outcome",
    "evolve",
    "failure",
    "fold",
    "status_of_failure",
]

Status = Literal["pending", "delivered", "failed", "expired", "dropped"]
FINAL: Final[frozenset[Status]] = frozenset({"delivered", "failed", "expired"})

EXPIRED: Final = "expired"
"""The reason (or reason prefix, ``expired: <last error>``) of a notification past its deadline."""
HELD: Final = "tenant_suspended"
"""The reason a notification waits while its tenant is suspended."""

NotificationEvent = (
    NotificationAccepted
    | NotificationDuplicate
    | NotificationDropped
    | NotificationDelivered
    | NotificationDeliveryFailed
)


# -- provider answers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    provider_id: str | None


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    """The client's token cannot be used any more: that client is unregistered with
    ``unregister_reason`` (``token_invalid``: the token is dead; ``token_foreign``: it belongs
    to another sender)."""

    reason: str
    unregister_reason: UnregisterReason = "token_invalid"


@dataclass(frozen=True, slots=True)
class CredentialsInvalid:
    """The tenant's provider credentials are wrong: the tenant is suspended."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """This message can never be sent (to this client, with these credentials)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later; ``after`` is the provider's Retry-After in seconds, if it gave one."""

    reason: str
    after: float | None = None


Outcome = Delivered | TokenInvalid | CredentialsInvalid | Rejected | Retry


# -- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotificationState:
    """What the events say of one notification. ``status`` None: no event yet."""

    status: Status | None = None
    attempts: int = 0
    duplicates: int = 0
    provider: ProviderType | None = None
    provider_id: str | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    accepted_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def held(self) -> bool:
        """Pending because its tenant is suspended."""
        return self.status == "pending" and self.last_error == HELD


def status_of_failure(reason: str) -> Status:
    """The final status of a permanent failure with ``reason``."""
    return "expired" if reason == EXPIRED or reason.startswith(EXPIRED + ":") else "failed"


def evolve(state: NotificationState, event: NotificationEvent) -> NotificationState:
    """The state after ``event``."""
    match event:
        case NotificationAccepted():
            if state.status not in (None, "dropped"):
                return state  # the same notification accepted twice: the first one counts
            return NotificationState(
                status="pending", duplicates=state.duplicates, accepted_at=event.occurred_at
            )
        case NotificationDropped():
            if state.status is not None:
                return state
            return NotificationState(status="dropped", last_error=event.reason)
        case NotificationDuplicate():
            if state.status is None:
                return state  # nothing known of the notification it repeats
            return replace(state, duplicates=state.duplicates + 1)
        case NotificationDelivered():
            if state.status in (None, "dropped", "delivered"):
                return state
            return replace(
                state,
                status="delivered",
                attempts=max(state.attempts, event.attempt),
                provider=event.provider,
                provider_id=event.provider_id,
                next_attempt_at=None,
                delivered_at=event.occurred_at,
            )
        case NotificationDeliveryFailed():
            if state.final or state.status in (None, "dropped"):
                return state
            provider = event.provider or state.provider
            if event.permanent:
                return replace(
                    state,
                    status=status_of_failure(event.reason),
                    attempts=max(state.attempts, event.attempt),
                    provider=provider,
                    last_error=event.reason,
                    next_attempt_at=None,
                    failed_at=event.occurred_at,
                )
            return replace(
                state,
                status="pending",
                attempts=max(state.attempts, event.attempt),
                provider=provider,
                last_error=event.reason,
                next_attempt_at=event.next_attempt_at,
            )
        case _:
            assert_never(event)


def fold(
    events: list[NotificationEvent], state: NotificationState | None = None
) -> NotificationState:
    """The state after ``events`` (in log order), from ``state`` or from nothing."""
    current = state or NotificationState()
    for event in events:
        current = evolve(current, event)
    return current


# -- what the dispatcher does --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    """An event to append; ``expected_version`` and ``idempotency_key`` as the log takes them.
    ``may_lose`` events are given up when the expected version no longer holds (someone else
    changed the aggregate first, which makes this event moot)."""

    event: Event
    expected_version: int | None = None
    idempotency_key: str | None = None
    may_lose: bool = False


@dataclass(frozen=True, slots=True)
class Skip:
    """Nothing more is owed: acknowledge."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send it now; this is attempt number ``attempt``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Fail it for good without sending; record ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Its tenant is suspended: keep it, look again later."""


Attempt = Skip | Send | GiveUp | Hold


@dataclass(frozen=True, slots=True)
class Recording:
    """What to append, then whether to acknowledge (``retry_in`` None) or hand the accepted
    event back after ``retry_in`` seconds."""

    appends: tuple[Append, ...]
    retry_in: float | None = None


def decide_attempt(
    state: NotificationState,
    accepted: NotificationAccepted,
    *,
    now: datetime,
    deadline: timedelta,
    client_registered: bool,
    tenant_suspended: bool,
) -> Attempt:
    """Whether to send ``accepted`` now, given what was recorded of it so far."""
    if state.final:
        return Skip()
    if now > accepted.occurred_at + deadline:
        return GiveUp(EXPIRED)
    if not client_registered:
        return GiveUp("client_unregistered")
    if tenant_suspended:
        return Hold()
    return Send(attempt=state.attempts + 1)


def failure(
    accepted: NotificationAccepted,
    *,
    reason: str,
    attempt: int,
    provider: ProviderType | None,
    event_id: str,
    now: datetime,
    cause: Cause,
    next_attempt_at: datetime | None = None,
) -> NotificationDeliveryFailed:
    """A ``notification.delivery_failed``: permanent unless ``next_attempt_at`` is given."""
    return NotificationDeliveryFailed(
        event_id=event_id,
        occurred_at=now,
        tenant_id=accepted.tenant_id,
        cause=cause,
        client_id=accepted.client_id,
        message_id=accepted.message_id,
        provider=provider,
        attempt=attempt,
        permanent=next_attempt_at is None,
        reason=reason,
        next_attempt_at=next_attempt_at,
    )


def decide_hold(
    state: NotificationState,
    accepted: NotificationAccepted,
    *,
    recheck: float,
    event_id: str,
    now: datetime,
    cause: Cause,
) -> Recording:
    """A held notification: recorded as held once (a retryable failure with reason
    ``tenant_suspended``, no attempt counted), then looked at again every ``recheck`` seconds
    without recording anything more."""
    if state.held:
        return Recording((), retry_in=recheck)
    held = failure(
        accepted,
        reason=HELD,
        attempt=state.attempts,
        provider=None,
        event_id=event_id,
        now=now,
        cause=cause,
        next_attempt_at=now + timedelta(seconds=recheck),
    )
    return Recording((Append(held),), retry_in=recheck)


def decide_outcome(
    outcome: Outcome,
    accepted: NotificationAccepted,
    *,
    provider: ProviderType,
    attempt: int,
    latency: float,
    client_version: int,
    tenant_version: int | None,
    tenant_suspended: bool,
    retry_delay: float,
    hold_recheck: float,
    deadline: timedelta,
    new_id: str,
    second_id: str,
    now: datetime,
    cause: Cause,
    credentials_fingerprint: str | None = None,
) -> Recording:
    """What to record after attempt ``attempt`` came to ``outcome``.

    ``retry_delay`` is the backoff before the next attempt (the provider's Retry-After wins when
    longer); ``client_version`` and ``tenant_version`` are the versions read before sending, so
    that an unregistration or a suspension decided on stale knowledge loses to a newer change.
    ``new_id`` and ``second_id`` name the events; ``credentials_fingerprint`` names the
    credentials the send used (recorded with a suspension).
    """

    def failed(reason: str, next_at: datetime | None = None) -> NotificationDeliveryFailed:
        return failure(
            accepted,
            reason=reason,
            attempt=attempt,
            provider=provider,
            event_id=new_id,
            now=now,
            cause=cause,
            next_attempt_at=next_at,
        )

    match outcome:
        case Delivered(provider_id=provider_id):
            delivered = NotificationDelivered(
                event_id=new_id,
                occurred_at=now,
                tenant_id=accepted.tenant_id,
                cause=cause,
                client_id=accepted.client_id,
                message_id=accepted.message_id,
                provider=provider,
                provider_id=provider_id,
                attempt=attempt,
                latency_ms=round(latency * 1000, 3),
            )
            return Recording(
                (Append(delivered, idempotency_key=delivered_key(accepted.dedup_key)),)
            )
        case TokenInvalid(reason=reason, unregister_reason=unregister_reason):
            unregistered = ClientUnregistered(
                event_id=second_id,
                occurred_at=now,
                tenant_id=accepted.tenant_id,
                cause=cause,
                client_id=accepted.client_id,
                reason=unregister_reason,
            )
            return Recording(
                (
                    Append(failed(f"{unregister_reason}: {reason}")),
                    Append(unregistered, expected_version=client_version, may_lose=True),
                )
            )
        case CredentialsInvalid(reason=reason):
            # not this notification's fault: it is held with the tenant's other notifications
            held = failure(
                accepted,
                reason=HELD,
                attempt=attempt,
                provider=provider,
                event_id=new_id,
                now=now,
                cause=cause,
                next_attempt_at=now + timedelta(seconds=hold_recheck),
            )
            appends = [Append(held)]
            if not tenant_suspended:
                suspended = TenantSuspended(
                    event_id=second_id,
                    occurred_at=now,
                    tenant_id=accepted.tenant_id,
                    cause=cause,
                    reason=f"{provider}: {reason}",
                    provider=provider,
                    fingerprint=credentials_fingerprint,
                )
                appends.insert(0, Append(suspended, expected_version=tenant_version, may_lose=True))
            return Recording(tuple(appends), retry_in=hold_recheck)
        case Rejected(reason=reason):
            return Recording((Append(failed(reason)),))
        case Retry(reason=reason, after=after):
            delay = max(after or 0.0, retry_delay)
            next_at = now + timedelta(seconds=delay)
            if next_at > accepted.occurred_at + deadline:
                return Recording((Append(failed(f"{EXPIRED}: {reason}")),))
            return Recording((Append(failed(reason, next_at)),), retry_in=delay)
        case _:
            assert_never(outcome)
