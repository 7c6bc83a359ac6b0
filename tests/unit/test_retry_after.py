"""Retry-After, as APNs and FCM send it: delay-seconds or an HTTP date, capped at an hour."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypush.delivery.retry_after import MAX_RETRY_AFTER, retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("nan", None),
        ("inf", None),
        ("Sun, 01 Mar 2026 12:01:00 GMT", 60.0),
        ("Sunday, 01-Mar-26 12:00:10 GMT", 10.0),
        ("Sun Mar  1 12:00:05 2026", 5.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("Sun, 99 Foo 2026 12:00:00 GMT", None),
    ],
)
def test_delay_seconds_and_http_dates(value: str | None, expected: float | None) -> None:
    assert retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "3600",
        "3601",
        "99999999",
        "1e300",
        "Sun, 01 Mar 2026 13:00:01 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ],
)
def test_a_wait_longer_than_an_hour_is_an_hour(value: str) -> None:
    assert MAX_RETRY_AFTER == 3600.0
    assert retry_after(value, now=NOW) == MAX_RETRY_AFTER


@settings(deadline=None)
@given(st.text())
def test_any_text_is_a_bounded_wait_or_none(value: str) -> None:
    seconds = retry_after(value, now=NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER
