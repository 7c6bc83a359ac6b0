"""How APNs answers become outcomes: :data:`REASONS`, from APNs ``reason`` strings.

APNs answers errors with a status and ``{"reason": "...", "timestamp": ...}``. The reason decides
(``Unregistered`` is a dead token, ``InvalidProviderToken`` bad credentials, ``PayloadTooLarge``
a message that can never be sent, ``TooManyRequests`` a retry); when there is no reason the
status does (410, 413, 429, 5xx). Anything else is retried and logged, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import structlog

from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    TokenInvalid,
)

__all__ = ["REASONS", "OutcomeKind", "outcome_for"]

log = structlog.get_logger(__name__)

OutcomeKind = type[TokenInvalid] | type[CredentialsInvalid] | type[Rejected] | type[Retry]

#: What each APNs ``reason`` means for relaypush. Anything else is retried and logged.
REASONS: Final[Mapping[str, OutcomeKind]] = {
    # the device token is dead
    "BadDeviceToken": TokenInvalid,
    "Unregistered": TokenInvalid,
    "DeviceTokenNotForTopic": TokenInvalid,
    "ExpiredToken": TokenInvalid,
    # the tenant's credentials (or its topic) are wrong
    "InvalidProviderToken": CredentialsInvalid,
    "MissingProviderToken": CredentialsInvalid,
    "TopicDisallowed": CredentialsInvalid,
    "BadTopic": CredentialsInvalid,
    "MissingTopic": CredentialsInvalid,
    "BadCertificate": CredentialsInvalid,
    "Forbidden": CredentialsInvalid,
    "UnrelatedKeyIdInToken": CredentialsInvalid,
    # the client chose an environment (apns or apns-sandbox) these credentials do not serve:
    # that client cannot be reached with them, the tenant's other clients can
    "BadCertificateEnvironment": Rejected,
    "BadEnvironmentKeyInToken": Rejected,
    # this message can never be sent
    "PayloadTooLarge": Rejected,
    "PayloadEmpty": Rejected,
    "BadMessageId": Rejected,
    "BadCollapseId": Rejected,
    "BadExpirationDate": Rejected,
    "BadPriority": Rejected,
    "InvalidPushType": Rejected,
    "DuplicateHeaders": Rejected,
    "MissingDeviceToken": Rejected,
    "BadPath": Rejected,
    "MethodNotAllowed": Rejected,
    # try again; an expired provider token is ours to renew, not the tenant's fault
    "ExpiredProviderToken": Retry,
    "TooManyProviderTokenUpdates": Retry,
    "TooManyRequests": Retry,
    "IdleTimeout": Retry,
    "InternalServerError": Retry,
    "ServiceUnavailable": Retry,
    "Shutdown": Retry,
}
#: What a status means when the answer names no reason.
_STATUSES: Final[Mapping[int, OutcomeKind]] = {410: TokenInvalid, 413: Rejected, 429: Retry}


def outcome_for(
    status: int,
    reason: str | None,
    *,
    apns_id: str | None = None,
    after: float | None = None,
    **context: object,
) -> Outcome:
    """Sort one APNs answer: 200 is delivered; otherwise :data:`REASONS` decides, or the status
    when there is no reason (410 a dead token, 413 too large, 429 and 5xx retry). Anything
    else is retried and logged with ``context``."""
    if status == 200:
        return Delivered(apns_id)
    kind = REASONS.get(reason) if reason else _STATUSES.get(status)
    if kind is None and not reason and status >= 500:
        kind = Retry
    what = f"{status} {reason}" if reason else f"{status} without a reason"
    if kind is None:
        log.warning("apns_unknown_answer", status=status, reason=reason, **context)
        return Retry(f"unknown APNs answer {what}", after)
    return Retry(what, after) if kind is Retry else kind(what)
