"""The delivery domain, table by table: every transition, every decision, every outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relaypush.domain.delivery import (
    HELD,
    CredentialsInvalid,
    Delivered,
    GiveUp,
    Hold,
    NotificationEvent,
    NotificationState,
    Outcome,
    Recording,
    Rejected,
    Retry,
    Send,
    Skip,
    Status,
    TokenInvalid,
    decide_attempt,
    decide_hold,
    decide_outcome,
    evolve,
    fold,
    status_of_failure,
)
from relaypush.domain.events import (
    Cause,
    ClientUnregistered,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    TenantSuspended,
)
from relaypush.domain.streams import delivered_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEADLINE = timedelta(hours=1)
CAUSE = Cause(message_id="m1", position=7)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def accepted(n: float = 0) -> NotificationAccepted:
    return NotificationAccepted(
        event_id="a", occurred_at=at(n), tenant_id="t", client_id="c", message_id="m1",
        dedup_key="k", topic="tp",
    )  # fmt: skip


def dropped(n: float = 0) -> NotificationDropped:
    return NotificationDropped(
        event_id="d", occurred_at=at(n), tenant_id="t", client_id="c", message_id="m1",
        reason="client_not_registered",
    )  # fmt: skip


def duplicate(n: float = 0) -> NotificationDuplicate:
    return NotificationDuplicate(
        event_id="u", occurred_at=at(n), tenant_id="t", client_id="c", message_id="m1",
        dedup_key="k",
    )  # fmt: skip


def delivered(n: float = 0, attempt: int = 1) -> NotificationDelivered:
    return NotificationDelivered(
        event_id="v", occurred_at=at(n), tenant_id="t", client_id="c", message_id="m1",
        provider="fcm", provider_id="p", attempt=attempt, latency_ms=1.0,
    )  # fmt: skip


def failed(
    n: float = 0, *, permanent: bool, reason: str = "boom", attempt: int = 1
) -> NotificationDeliveryFailed:
    return NotificationDeliveryFailed(
        event_id="f", occurred_at=at(n), tenant_id="t", client_id="c", message_id="m1",
        provider="apns", attempt=attempt, permanent=permanent, reason=reason,
        next_attempt_at=None if permanent else at(n + 30),
    )  # fmt: skip


# -- transitions ----------------------------------------------------------------------------------

TRANSITIONS: list[tuple[str, list[NotificationEvent], Status | None]] = [
    ("nothing", [], None),
    ("accepted", [accepted()], "pending"),
    ("dropped", [dropped()], "dropped"),
    ("dropped, then accepted", [dropped(), accepted(1)], "pending"),
    ("accepted, then dropped", [accepted(), dropped(1)], "pending"),
    ("accepted twice", [accepted(), accepted(1)], "pending"),
    ("duplicate of nothing", [duplicate()], None),
    ("retryable failure", [accepted(), failed(1, permanent=False)], "pending"),
    ("permanent failure", [accepted(), failed(1, permanent=True)], "failed"),
    ("expired", [accepted(), failed(1, permanent=True, reason="expired")], "expired"),
    (
        "expired after retries",
        [accepted(), failed(1, permanent=True, reason="expired: 503")],
        "expired",
    ),
    ("delivered", [accepted(), delivered(1)], "delivered"),
    (
        "delivered after retries",
        [accepted(), failed(1, permanent=False), delivered(2)],
        "delivered",
    ),
    (
        "delivered wins over a later failure",
        [accepted(), delivered(1), failed(2, permanent=True)],
        "delivered",
    ),
    (
        "delivered after a permanent failure",
        [accepted(), failed(1, permanent=True), delivered(2)],
        "delivered",
    ),
    (
        "a retry after a permanent failure",
        [accepted(), failed(1, permanent=True), failed(2, permanent=False)],
        "failed",
    ),
    ("outcome of nothing", [delivered(), failed(1, permanent=True)], None),
    ("outcome of a drop", [dropped(), delivered(1)], "dropped"),
]


@pytest.mark.parametrize(
    ("events", "status"), [t[1:] for t in TRANSITIONS], ids=[t[0] for t in TRANSITIONS]
)
def test_each_transition(events: list[NotificationEvent], status: Status | None) -> None:
    assert fold(events).status == status


def test_the_fold_keeps_what_each_event_says() -> None:
    state = fold([accepted(), duplicate(1), failed(2, permanent=False, attempt=1)])
    assert (state.attempts, state.duplicates, state.last_error) == (1, 1, "boom")
    assert (state.next_attempt_at, state.accepted_at, state.provider) == (at(32), at(0), "apns")
    state = evolve(state, delivered(3, attempt=2))
    assert (state.attempts, state.provider, state.provider_id) == (2, "fcm", "p")
    assert (state.delivered_at, state.next_attempt_at, state.final) == (at(3), None, True)


def test_a_held_notification_is_pending_with_the_held_reason() -> None:
    state = fold([accepted(), failed(1, permanent=False, reason=HELD, attempt=0)])
    assert (state.status, state.held, state.attempts) == ("pending", True, 0)


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("expired", "expired"),
        ("expired: 503", "expired"),
        ("expiredish", "failed"),
        ("x", "failed"),
    ],
)
def test_status_of_failure(reason: str, status: Status) -> None:
    assert status_of_failure(reason) == status


# -- before sending -------------------------------------------------------------------------------

ATTEMPTS = [
    ("pending and owed", fold([accepted()]), 10, True, False, Send(1)),
    (
        "after two attempts",
        fold([accepted(), failed(1, permanent=False, attempt=2)]),
        10,
        True,
        False,
        Send(3),
    ),
    ("already delivered", fold([accepted(), delivered(1)]), 10, True, False, Skip()),
    ("failed for good", fold([accepted(), failed(1, permanent=True)]), 10, True, False, Skip()),
    ("past its deadline", fold([accepted()]), 3601, True, False, GiveUp("expired")),
    ("client gone", fold([accepted()]), 10, False, False, GiveUp("client_unregistered")),
    ("tenant suspended", fold([accepted()]), 10, True, True, Hold()),
    ("suspended past the deadline", fold([accepted()]), 3601, True, True, GiveUp("expired")),
]


@pytest.mark.parametrize(
    ("state", "seconds", "registered", "suspended", "decision"),
    [a[1:] for a in ATTEMPTS],
    ids=[a[0] for a in ATTEMPTS],
)
def test_each_attempt_decision(
    state: NotificationState, seconds: float, registered: bool, suspended: bool, decision: object
) -> None:
    got = decide_attempt(
        state,
        accepted(),
        now=at(seconds),
        deadline=DEADLINE,
        client_registered=registered,
        tenant_suspended=suspended,
    )
    assert got == decision


def test_a_hold_is_recorded_once_then_only_looked_at_again() -> None:
    state = fold([accepted()])
    first = decide_hold(state, accepted(), recheck=5.0, event_id="h", now=at(10), cause=CAUSE)
    [append] = first.appends
    held = append.event
    assert isinstance(held, NotificationDeliveryFailed)
    assert (held.reason, held.permanent, held.attempt, held.next_attempt_at) == (
        HELD,
        False,
        0,
        at(15),
    )
    assert first.retry_in == 5.0
    again = decide_hold(
        evolve(state, held), accepted(), recheck=9.0, event_id="x", now=at(20), cause=CAUSE
    )
    assert (again.appends, again.retry_in) == ((), 9.0)


# -- after sending --------------------------------------------------------------------------------


def outcome_of(
    outcome: Outcome, *, seconds: float = 10, suspended: bool = False, delay: float = 4.0
) -> Recording:
    return decide_outcome(
        outcome,
        accepted(),
        provider="apns",
        attempt=3,
        latency=0.25,
        client_version=11,
        tenant_version=5,
        tenant_suspended=suspended,
        retry_delay=delay,
        hold_recheck=2.0,
        deadline=DEADLINE,
        new_id="n1",
        second_id="n2",
        now=at(seconds),
        cause=CAUSE,
    )


def test_delivered_is_recorded_once_per_notification() -> None:
    recording = outcome_of(Delivered("apns-id"))
    [append] = recording.appends
    assert isinstance(append.event, NotificationDelivered)
    assert (append.event.attempt, append.event.latency_ms, append.event.provider_id) == (
        3,
        250.0,
        "apns-id",
    )
    assert append.idempotency_key == delivered_key("k")
    assert recording.retry_in is None


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (TokenInvalid("Unregistered"), "token_invalid"),
        (TokenInvalid("SENDER_ID_MISMATCH", unregister_reason="token_foreign"), "token_foreign"),
    ],
)
def test_a_dead_or_foreign_token_fails_the_message_and_unregisters_that_client_only(
    outcome: Outcome, reason: str
) -> None:
    recording = outcome_of(outcome)
    failure, unregister = recording.appends
    assert isinstance(failure.event, NotificationDeliveryFailed)
    assert failure.event.permanent
    assert failure.event.reason.startswith(reason)
    assert isinstance(unregister.event, ClientUnregistered)
    assert (unregister.event.reason, unregister.expected_version, unregister.may_lose) == (
        reason,
        11,
        True,
    )
    assert recording.retry_in is None


def test_wrong_credentials_suspend_the_tenant_and_hold_the_message() -> None:
    recording = outcome_of(CredentialsInvalid("InvalidProviderToken"))
    suspend, hold = recording.appends
    assert isinstance(suspend.event, TenantSuspended)
    assert (suspend.expected_version, suspend.may_lose) == (5, True)
    assert suspend.event.reason == "apns: InvalidProviderToken"
    assert isinstance(hold.event, NotificationDeliveryFailed)
    assert (hold.event.reason, hold.event.permanent) == (HELD, False)
    assert recording.retry_in == 2.0
    already = outcome_of(CredentialsInvalid("InvalidProviderToken"), suspended=True)
    assert [type(a.event) for a in already.appends] == [NotificationDeliveryFailed]


def test_a_rejected_message_fails_for_good() -> None:
    recording = outcome_of(Rejected("BadCertificateEnvironment"))
    [append] = recording.appends
    assert isinstance(append.event, NotificationDeliveryFailed)
    assert (append.event.permanent, append.event.reason) == (True, "BadCertificateEnvironment")


@pytest.mark.parametrize(
    ("after", "delay", "retry_in"), [(None, 4.0, 4.0), (10.0, 4.0, 10.0), (1.0, 4.0, 4.0)]
)
def test_a_retry_waits_the_longer_of_backoff_and_retry_after(
    after: float | None, delay: float, retry_in: float
) -> None:
    recording = outcome_of(Retry("503", after=after), delay=delay)
    [append] = recording.appends
    assert isinstance(append.event, NotificationDeliveryFailed)
    assert (append.event.permanent, append.event.next_attempt_at) == (False, at(10 + retry_in))
    assert recording.retry_in == retry_in


def test_a_retry_that_would_pass_the_deadline_expires_the_message() -> None:
    recording = outcome_of(Retry("503"), seconds=3598, delay=4.0)
    [append] = recording.appends
    assert isinstance(append.event, NotificationDeliveryFailed)
    assert (append.event.permanent, append.event.reason) == (True, "expired: 503")
    assert recording.retry_in is None
