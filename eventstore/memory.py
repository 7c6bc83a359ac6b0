"""An in-memory event log with the semantics of the JetStream one, for fast tests.

Same positions, versions, duplicate window, filters, subject validation (subjects are encoded
under ``prefix`` exactly as on the wire, so what JetStream refuses is refused here too) and
durable subscriptions: shared by every subscriber of one name, explicit acks, ``nak`` with an
optional delay, redelivery of what was not acked within ``ack_wait``, ``max_ack_pending``.
Nothing is persisted; one instance lives in one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from eventstore.delivery import SettledOnce
from eventstore.errors import EventLogUnavailable, WrongExpectedVersion
from eventstore.headers import checked_headers
from eventstore.log import (
    REST,
    AppendResult,
    Delivery,
    RecordedEvent,
    Subject,
    SubjectFilter,
    SubjectFilters,
    Subscription,
    Wildcard,
    filters_of,
)
from eventstore.subjects import encode_filter, encode_subject

__all__ = ["InMemoryEventLog"]


class InMemoryEventLog:
    """An :class:`~eventstore.log.EventLog` kept in a list.

    ``now`` is the clock of the duplicate window (seconds, monotonic); ack deadlines and nak
    delays run on the event loop's clock, since subscribers really wait for them.

    An idempotency key seen inside the window makes the append a duplicate when no expected
    version is given or when it still holds. When it no longer holds, the append is a duplicate
    if the subject's last event was stored under the same key (a retry of an append that went
    through) and a :class:`WrongExpectedVersion` otherwise: what the JetStream log reports.
    """

    def __init__(
        self,
        *,
        prefix: str = "events",
        duplicate_window: float = 300.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._window = duplicate_window
        self._now = now
        self._events: list[RecordedEvent] = []
        self._last_by_subject: dict[Subject, int] = {}
        self._keys: dict[str, tuple[int, float]] = {}
        self._key_order: deque[tuple[float, str]] = deque()
        self._durables: dict[str, _Durable] = {}
        self._changed = asyncio.Event()
        self._closed = False

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        """Store ``data`` under ``subject`` (see :class:`~eventstore.log.EventLog`)."""
        self._check_open()
        encode_subject(self._prefix, subject)
        user_headers = MappingProxyType(checked_headers(headers))
        version = self._last_by_subject.get(subject, 0)
        if idempotency_key is not None:
            seen = self._seen(idempotency_key)
            if seen is not None and expected_version in (None, version):
                return AppendResult(position=seen, duplicate=True)
        if expected_version is not None and expected_version != version:
            if idempotency_key is not None and self._is_retry(version, idempotency_key):
                return AppendResult(position=version, duplicate=True)
            raise WrongExpectedVersion(subject, expected_version, version)
        position = len(self._events) + 1
        self._events.append(
            RecordedEvent(
                position=position,
                subject=subject,
                data=bytes(data),
                recorded_at=datetime.now(UTC),
                idempotency_key=idempotency_key,
                headers=user_headers,
            )
        )
        self._last_by_subject[subject] = position
        if idempotency_key is not None:
            stamp = self._now()
            self._keys[idempotency_key] = (position, stamp)
            self._key_order.append((stamp, idempotency_key))
        self._notify()
        return AppendResult(position=position)

    async def last(self, subject: Subject) -> RecordedEvent | None:
        """The last event stored under exactly ``subject``, or None."""
        self._check_open()
        encode_subject(self._prefix, subject)
        position = self._last_by_subject.get(subject)
        return None if position is None else self._events[position - 1]

    async def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events matching the filter in position order, up to ``to_position`` or the end,
        starting no earlier than the first event recorded at or after ``from_time``."""
        self._check_open()
        encode_filter(self._prefix, subject_filter)
        end = len(self._events) if to_position is None else min(to_position, len(self._events))
        start = max(from_position, 1) - 1
        if from_time is not None:
            if from_time.tzinfo is None:
                raise ValueError("from_time must be timezone-aware")
            start = max(start, self._first_index_at(from_time))
        for index in range(start, end):
            event = self._events[index]
            if matches(subject_filter, event.subject):
                yield event

    async def first_position(self) -> int:
        """The position of the oldest event, 0 when the log is empty (nothing ages out here)."""
        self._check_open()
        return 1 if self._events else 0

    async def last_position(self) -> int:
        """The position of the newest event, 0 when the log is empty."""
        self._check_open()
        return len(self._events)

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        """Create or bind the durable ``durable``; an existing one keeps its place and takes
        the filters and limits given now, unless ``from_position`` is given, which recreates it."""
        self._check_open()
        filters = tuple(filters_of(subject_filter))
        for one in filters:
            encode_filter(self._prefix, one)
        existing = self._durables.get(durable)
        if from_position is not None or existing is None:
            self._durables[durable] = _Durable(
                filters=filters,
                ack_wait=ack_wait,
                max_ack_pending=max_ack_pending,
                cursor=max(from_position or 1, 1),
            )
        else:
            existing.filters = filters
            existing.ack_wait = ack_wait
            existing.max_ack_pending = max_ack_pending
        return _MemorySubscription(self, durable)

    async def close(self) -> None:
        """Refuse further use; wakes fetchers so that they notice."""
        self._closed = True
        self._notify()

    def _first_index_at(self, when: datetime) -> int:
        """The index of the first event recorded at or after ``when`` (the length if none)."""
        for index, event in enumerate(self._events):
            if event.recorded_at >= when:
                return index
        return len(self._events)

    def _seen(self, key: str) -> int | None:
        horizon = self._now() - self._window
        while self._key_order and self._key_order[0][0] <= horizon:
            stamp, old = self._key_order.popleft()
            if self._keys.get(old, (0, None))[1] == stamp:
                del self._keys[old]
        seen = self._keys.get(key)
        return None if seen is None else seen[0]

    def _is_retry(self, version: int, key: str) -> bool:
        """Whether the subject's last event (at ``version``) was stored under ``key``."""
        return version > 0 and self._events[version - 1].idempotency_key == key

    def _check_open(self) -> None:
        if self._closed:
            raise EventLogUnavailable("the in-memory event log is closed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _fetch(self, name: str, max_messages: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._check_open()
            state = self._durables[name]
            now = loop.time()
            found = self._collect(state, max_messages, now)
            if found:
                left = self._pending(name) + len(found)
                deliveries: list[Delivery] = []
                for event, count in found:
                    left -= 1
                    deliveries.append(_MemoryDelivery(self, state, event, count, left))
                return deliveries
            wait = deadline - now
            due = [p.due for p in state.outstanding.values()]
            if due:
                wait = min(wait, min(due) - now)
            if deadline <= now:
                return []
            changed = self._changed
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    await changed.wait()
            except TimeoutError:
                pass

    def _collect(
        self, state: _Durable, max_messages: int, now: float
    ) -> list[tuple[RecordedEvent, int]]:
        found: list[tuple[RecordedEvent, int]] = []
        for position in sorted(p for p, o in state.outstanding.items() if o.due <= now):
            if len(found) >= max_messages:
                return found
            outstanding = state.outstanding[position]
            outstanding.num_delivered += 1
            outstanding.due = now + state.ack_wait
            found.append((self._events[position - 1], outstanding.num_delivered))
        while (
            len(found) < max_messages
            and (state.max_ack_pending < 0 or len(state.outstanding) < state.max_ack_pending)
            and state.cursor <= len(self._events)
        ):
            event = self._events[state.cursor - 1]
            state.cursor += 1
            if state.matches(event.subject):
                state.outstanding[event.position] = _Outstanding(1, now + state.ack_wait)
                found.append((event, 1))
        return found

    def _pending(self, name: str) -> int:
        self._check_open()
        state = self._durables[name]
        return sum(1 for event in self._events[state.cursor - 1 :] if state.matches(event.subject))


def matches(subject_filter: SubjectFilter, subject: Subject) -> bool:
    """Whether ``subject`` is matched by ``subject_filter`` (NATS wildcard rules)."""
    for index, token in enumerate(subject_filter):
        if isinstance(token, Wildcard):
            if token == REST:
                return len(subject) > index
            if index >= len(subject):
                return False
        elif index >= len(subject) or subject[index] != token:
            return False
    return len(subject) == len(subject_filter)


@dataclass(slots=True)
class _Outstanding:
    num_delivered: int
    due: float


@dataclass(slots=True)
class _Durable:
    filters: tuple[SubjectFilter, ...]
    ack_wait: float
    max_ack_pending: int
    cursor: int
    outstanding: dict[int, _Outstanding] = field(default_factory=dict)

    def matches(self, subject: Subject) -> bool:
        return any(matches(one, subject) for one in self.filters)


class _MemorySubscription:
    def __init__(self, log: InMemoryEventLog, name: str) -> None:
        self._log = log
        self._name = name

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        return await self._log._fetch(self._name, max_messages, timeout)

    async def pending(self) -> int:
        return self._log._pending(self._name)

    async def close(self) -> None:
        return None


class _MemoryDelivery(SettledOnce):
    def __init__(
        self,
        log: InMemoryEventLog,
        state: _Durable,
        event: RecordedEvent,
        num_delivered: int,
        pending: int,
    ) -> None:
        super().__init__(event, num_delivered, pending)
        self._log = log
        self._state = state

    async def _ack(self) -> None:
        self._state.outstanding.pop(self._event.position, None)
        self._log._notify()

    async def _nak(self, delay: float | None) -> None:
        outstanding = self._state.outstanding.get(self._event.position)
        if outstanding is not None:
            outstanding.due = asyncio.get_running_loop().time() + (delay or 0.0)
        self._log._notify()

    async def in_progress(self) -> None:
        self._log._check_open()  # a closed log refuses even a settled delivery's extension
        await super().in_progress()

    async def _extend(self) -> None:
        outstanding = self._state.outstanding.get(self._event.position)
        if outstanding is not None:
            outstanding.due = asyncio.get_running_loop().time() + self._state.ack_wait

    def _settle(self) -> bool:
        self._log._check_open()
        return super()._settle()
