"""How APNs answers become outcomes: the reason table, status fallbacks, unknown answers."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from relaypush.delivery.apns_outcomes import REASONS, outcome_for
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
)

# What the relay contract asks for, written out independently of the table under test.
CONTRACT: list[tuple[int, str, type[Outcome]]] = [
    (400, "BadDeviceToken", TokenInvalid),
    (410, "Unregistered", TokenInvalid),
    (400, "DeviceTokenNotForTopic", TokenInvalid),
    (410, "ExpiredToken", TokenInvalid),
    (403, "InvalidProviderToken", CredentialsInvalid),
    (403, "MissingProviderToken", CredentialsInvalid),
    (400, "TopicDisallowed", CredentialsInvalid),
    (403, "BadCertificate", CredentialsInvalid),
    (403, "BadCertificateEnvironment", Rejected),  # the client's choice of environment
    (403, "BadEnvironmentKeyInToken", Rejected),
    (413, "PayloadTooLarge", Rejected),
    (400, "BadMessageId", Rejected),
    (400, "BadPriority", Rejected),
    (400, "PayloadEmpty", Rejected),
    (403, "ExpiredProviderToken", Retry),
    (429, "TooManyProviderTokenUpdates", Retry),
    (429, "TooManyRequests", Retry),
    (500, "InternalServerError", Retry),
    (503, "ServiceUnavailable", Retry),
    (503, "Shutdown", Retry),
]


@pytest.mark.parametrize(("status", "reason", "expected"), CONTRACT)
def test_contract_reasons(status: int, reason: str, expected: type[Outcome]) -> None:
    outcome = outcome_for(status, reason)
    assert type(outcome) is expected
    assert reason in str(outcome)


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_every_reason_in_the_table(reason: str) -> None:
    kind = REASONS[reason]
    outcome = outcome_for(400, reason, after=3.0)
    assert type(outcome) is kind
    if isinstance(outcome, Retry):
        assert outcome.after == 3.0


def test_table_kinds_are_only_the_four_failures() -> None:
    assert set(REASONS.values()) == {TokenInvalid, CredentialsInvalid, Rejected, Retry}
    assert len(REASONS) >= 30


def test_delivered_carries_the_apns_id() -> None:
    assert outcome_for(200, None, apns_id="ABC") == Delivered("ABC")
    assert outcome_for(200, "ignored", apns_id="ABC") == Delivered("ABC")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (410, TokenInvalid),
        (413, Rejected),
        (429, Retry),
        (500, Retry),
        (502, Retry),
        (503, Retry),
    ],
)
def test_status_decides_when_there_is_no_reason(status: int, expected: type[Outcome]) -> None:
    with capture_logs() as logs:
        outcome = outcome_for(status, None, after=9.0)
    assert type(outcome) is expected
    assert not logs
    if isinstance(outcome, Retry):
        assert outcome.after == 9.0


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "SomethingNew"), (403, "Unheard"), (400, None), (404, None)]
)
def test_unknown_answers_are_retried_and_logged(status: int, reason: str | None) -> None:
    with capture_logs() as logs:
        outcome = outcome_for(status, reason, after=2.0, tenant_id="t1")
    assert isinstance(outcome, Retry)
    assert outcome.after == 2.0
    assert outcome.reason.startswith("unknown APNs answer")
    assert logs == [
        {
            "event": "apns_unknown_answer",
            "log_level": "warning",
            "status": status,
            "reason": reason,
            "tenant_id": "t1",
        }
    ]
