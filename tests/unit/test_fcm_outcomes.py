"""Every FCM answer sorted into its outcome."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from relaypush.delivery.fcm import (
    ERROR_CODES,
    HTTP_STATUSES,
    Action,
    RefreshToken,
    classify,
    interpret,
)
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


def fcm_error(
    code: int,
    status: str,
    error_code: str | None = None,
    message: str = "",
    *extra: Mapping[str, object],
) -> bytes:
    """An FCM error body, as Google sends it."""
    details: list[Mapping[str, object]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR, "errorCode": error_code})
    details.extend(extra)
    error = {"code": code, "message": message, "status": status, "details": details}
    return json.dumps({"error": error}).encode()


TOKEN_VIOLATION = {
    "@type": BAD_REQUEST,
    "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}],
}

CASES: list[tuple[str, int, bytes, dict[str, str], Outcome | RefreshToken]] = [
    (
        "delivered",
        200,
        b'{"name": "projects/p/messages/0:1%31bd"}',
        {},
        Delivered("projects/p/messages/0:1%31bd"),
    ),
    ("delivered, body not json", 200, b"ok", {}, Delivered(None)),
    (
        "unregistered",
        404,
        fcm_error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
        {},
        TokenInvalid("UNREGISTERED (404): Requested entity was not found."),
    ),
    (
        "invalid token, by message",
        400,
        fcm_error(
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
        ),
        {},
        TokenInvalid(
            "INVALID_ARGUMENT (400): The registration token is not a valid FCM registration token"
        ),
    ),
    (
        "invalid token, by field violation",
        400,
        fcm_error(
            400, "INVALID_ARGUMENT", None, "Request contains an invalid argument.", TOKEN_VIOLATION
        ),
        {},
        TokenInvalid("INVALID_ARGUMENT (400): Request contains an invalid argument."),
    ),
    (
        "invalid message",
        400,
        fcm_error(
            400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'"
        ),
        {},
        Rejected("INVALID_ARGUMENT (400): Invalid value at 'message.data[0].value'"),
    ),
    (
        "sender id mismatch beats the status: that client's token is another sender's",
        403,
        fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
        {},
        TokenInvalid("SENDER_ID_MISMATCH (403): SenderId mismatch", "token_foreign"),
    ),
    (
        "third party auth error beats the 401",
        401,
        fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS"),
        {},
        CredentialsInvalid("THIRD_PARTY_AUTH_ERROR (401): Auth error from APNS"),
    ),
    (
        "bearer token refused",
        401,
        fcm_error(401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials."),
        {},
        RefreshToken("UNAUTHENTICATED (401): Request had invalid authentication credentials."),
    ),
    (
        "permission denied",
        403,
        fcm_error(
            403, "PERMISSION_DENIED", None, "Permission 'cloudmessaging.messages.create' denied"
        ),
        {},
        RefreshToken("PERMISSION_DENIED (403): Permission 'cloudmessaging.messages.create' denied"),
    ),
    ("401 from a proxy", 401, b"<html>no</html>", {}, RefreshToken("HTTP (401)")),
    (
        "quota exceeded, retry-after seconds",
        429,
        fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded"),
        {"retry-after": "2"},
        Retry("QUOTA_EXCEEDED (429): Quota exceeded", 2.0),
    ),
    (
        "resource exhausted, retry-after date",
        429,
        fcm_error(429, "RESOURCE_EXHAUSTED", None, "slow down"),
        {"retry-after": "Sun, 01 Mar 2026 12:00:30 GMT"},
        Retry("RESOURCE_EXHAUSTED (429): slow down", 30.0),
    ),
    (
        "unavailable",
        503,
        fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
        {},
        Retry("UNAVAILABLE (503): The service is currently unavailable."),
    ),
    (
        "internal",
        500,
        fcm_error(500, "INTERNAL", "INTERNAL", "Internal error encountered."),
        {"retry-after": "7"},
        Retry("INTERNAL (500): Internal error encountered.", 7.0),
    ),
    ("502 html from a proxy", 502, b"<html>bad gateway</html>", {}, Retry("HTTP (502)")),
    (
        "unknown error code falls back to the status",
        500,
        fcm_error(500, "INTERNAL", "UNSPECIFIED_ERROR", "huh"),
        {},
        Retry("INTERNAL (500): huh"),
    ),
    (
        "unknown everything",
        418,
        fcm_error(418, "TEAPOT", "BREWING", "short and stout"),
        {"retry-after": "5"},
        Retry("unknown answer BREWING (418): short and stout", 5.0),
    ),
    ("unknown 404 without a code", 404, b"", {}, Retry("unknown answer HTTP (404)")),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_answer_maps_to_outcome(
    status: int, body: bytes, headers: dict[str, str], expected: Outcome | RefreshToken
) -> None:
    assert interpret(status, headers, body, now=NOW) == expected


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_code_in_the_table_is_recognised_from_the_details(code: str) -> None:
    action, reason = classify(400, fcm_error(400, "SOMETHING_ELSE", code))
    assert action is ERROR_CODES[code]
    assert reason.startswith(f"{code} (400)")


@pytest.mark.parametrize("status", sorted(HTTP_STATUSES))
def test_every_http_status_in_the_table_is_recognised_without_a_body(status: int) -> None:
    assert classify(status, b"")[0] is HTTP_STATUSES[status]


def test_error_code_of_another_detail_type_is_ignored() -> None:
    other = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "errorCode": "UNREGISTERED"}
    action, _ = classify(503, fcm_error(503, "UNAVAILABLE", None, "", other))
    assert action is Action.RETRY


def test_long_messages_are_cut() -> None:
    _, reason = classify(400, fcm_error(400, "INVALID_ARGUMENT", None, "x" * 5000))
    assert len(reason) < 250
