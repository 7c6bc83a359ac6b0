"""The event log contract: what every implementation (JetStream, in-memory) provides.

An event is opaque bytes stored under a *subject*, a tuple of caller-chosen tokens. Each event
gets a *position*, the log-wide sequence number (1, 2, 3, ...). A subject's *version* is the
position of its last event, 0 when it has none; appends may name the version they expect
(optimistic concurrency) and an idempotency key (a second append with the same key inside the
duplicate window is reported as a duplicate and stores nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

__all__ = [
    "ANY",
    "REST",
    "AppendResult",
    "Delivery",
    "EventLog",
    "RecordedEvent",
    "Subject",
    "SubjectFilter",
    "SubjectFilters",
    "Subscription",
    "Wildcard",
    "filters_of",
]


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A filter token: ``ANY`` matches exactly one token, ``REST`` one or more trailing tokens."""

    wire: str


ANY: Final = Wildcard("*")
REST: Final = Wildcard(">")

Subject = tuple[str, ...]
SubjectFilter = tuple[str | Wildcard, ...]
SubjectFilters = SubjectFilter | list[SubjectFilter]
"""One filter (a tuple of tokens), or several (a list of them): an event matching any is taken."""


def filters_of(subject_filters: SubjectFilters) -> list[SubjectFilter]:
    """The filters of ``subject_filters`` as a non-empty list."""
    found = list(subject_filters) if isinstance(subject_filters, list) else [subject_filters]
    if not found:
        raise ValueError("a subscription needs at least one subject filter")
    return found


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored: where it is, what it is under, and its bytes."""

    position: int
    subject: Subject
    data: bytes
    recorded_at: datetime
    idempotency_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed. ``duplicate`` means the key was seen: nothing new was stored."""

    position: int
    duplicate: bool = False


class Delivery(Protocol):
    """One event handed to a durable subscriber; it stays pending until acked."""

    @property
    def event(self) -> RecordedEvent: ...

    @property
    def num_delivered(self) -> int:
        """How many times this event was handed out, 1 the first time."""
        ...

    @property
    def pending(self) -> int:
        """How many matching events the subscription had not handed out yet when it handed out
        this one (0: this was the newest match in the log at that moment)."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None:
        """Hand the event out again, after ``delay`` seconds if given."""
        ...

    async def in_progress(self) -> None:
        """Extend the ack deadline while work goes on."""
        ...


class Subscription(Protocol):
    """A durable pull subscription; several processes with the same name share the work."""

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        """Up to ``max_messages`` deliveries; an empty list when none came within ``timeout``."""
        ...

    async def pending(self) -> int:
        """Events matching the filter that were not yet handed out (the consumer's lag)."""
        ...

    async def close(self) -> None: ...


class EventLog(Protocol):
    """An append-only log of events under subjects."""

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        """Store ``data`` under ``subject`` once it is durable.

        Raises :class:`~eventstore.errors.WrongExpectedVersion` when ``expected_version`` is
        given and is not the subject's version (0: the subject must have no event), and
        :class:`~eventstore.errors.EventLogUnavailable` when the log cannot be reached.
        """
        ...

    async def last(self, subject: Subject) -> RecordedEvent | None:
        """The last event stored under exactly ``subject``, or None."""
        ...

    def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events matching the filter in position order, from ``from_position`` up to
        ``to_position`` (inclusive) or to the last position at the time of the call.

        With ``from_time`` (timezone-aware), the read also starts no earlier than the first
        event recorded at or after that time, and goes on from there whatever the times of the
        later events (recorded times rise with positions, as the log's clock does)."""
        ...

    async def first_position(self) -> int:
        """The position of the oldest event the log still holds, 0 when it is empty (a log with
        limits drops its oldest events; positions are never reused)."""
        ...

    async def last_position(self) -> int:
        """The position of the newest event in the log, 0 when it is empty."""
        ...

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        """Create or bind the durable subscription ``durable``: delivers every event matching
        one of the filters from the start of the log (or, when ``from_position`` is given, from
        that position, recreating the durable and forgetting where it was), and each again until
        it is acked. An existing durable keeps its place and takes the filters, ``ack_wait`` and
        ``max_ack_pending`` given now. ``max_ack_pending`` bounds the events handed out and not
        acked yet, naked ones waiting for their delay included (-1: no bound)."""
        ...

    async def close(self) -> None: ...
