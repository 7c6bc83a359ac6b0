"""A provider's ``Retry-After`` header as seconds to wait, for APNs and FCM alike.

The header holds delay-seconds (``120``) or an HTTP date (``Sun, 01 Mar 2026 12:01:00 GMT``,
or one of the two obsolete date forms RFC 9110 still asks recipients to read). A date is
measured from ``now``; a delay in the past is 0. Whatever the provider says, the wait is at most
:data:`MAX_RETRY_AFTER`: a ``Retry-After: 99999999`` would otherwise park a notification for
years (the delivery deadline still ends it sooner). Anything unreadable is None, and the
dispatcher's own backoff applies.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["MAX_RETRY_AFTER", "retry_after"]

MAX_RETRY_AFTER: Final = 3600.0
"""The longest wait a provider's ``Retry-After`` can ask for, in seconds (one hour)."""


def retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, between 0 and :data:`MAX_RETRY_AFTER`;
    None when there is no value or it is neither a number nor an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)
