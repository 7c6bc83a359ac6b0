"""Errors raised by the event log.

EventStoreError
├── WrongExpectedVersion   the subject moved on since the caller read it
├── EventLogUnavailable    the log could not be reached or did not answer in time
└── InvalidSubject         no tokens, an empty token, or over 3,072 bytes once encoded
"""

from __future__ import annotations

__all__ = ["EventLogUnavailable", "EventStoreError", "InvalidSubject", "WrongExpectedVersion"]


class EventStoreError(Exception):
    """Root of every error raised by :mod:`eventstore`."""


class WrongExpectedVersion(EventStoreError):
    """An append named an expected version that is no longer the subject's last position."""

    def __init__(self, subject: tuple[str, ...], expected: int, actual: int | None) -> None:
        self.subject = subject
        self.expected = expected
        self.actual = actual
        super().__init__(f"expected version {expected} of {subject!r}, found {actual}")


class EventLogUnavailable(EventStoreError):
    """The log could not be reached, or did not acknowledge in time."""


class InvalidSubject(EventStoreError):
    """A subject has no tokens, an empty token, or is too long once encoded."""
