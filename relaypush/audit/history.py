"""History: the events of one client, one notification, one tenant or the whole log.

A :class:`HistoryQuery` picks the subjects (read with server-side filters and merged in
position order), a time range (the log's recorded time) and event types; entries come oldest
first. Pages are cut by a cursor, the position of the last entry returned. Each entry shows the
event's cause and its data with the device token replaced by its fingerprint; a checkpoint's
leaves are shown as their count.

Personal fields sealed under a client's key (:mod:`relaypush.privacy`) are opened with the
``sealer`` given; where they cannot be (the client was erased) the entry shows ``"sealed":
"erased"`` and the token fingerprint ``"erased"`` instead (``"sealed"`` when no sealer was
given, so nothing was opened).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AsyncExitStack, aclosing
from datetime import datetime
from typing import Any, Final

import msgspec

from eventstore import ANY, REST, EventLog, RecordedEvent, SubjectFilter, Wildcard
from relaypush.audit.errors import QueryError
from relaypush.audit.export import recorded_time
from relaypush.domain.events import (
    EVENT_TYPES,
    AuditCheckpoint,
    ClientRegistered,
    Event,
    decode_event,
)
from relaypush.domain.personal import sealed_of
from relaypush.logs import fingerprint
from relaypush.privacy import Sealer

__all__ = [
    "DEFAULT_PAGE",
    "EVENT_TAGS",
    "MAX_PAGE",
    "HistoryEntry",
    "HistoryPage",
    "HistoryQuery",
    "follow_history",
    "history",
    "history_page",
    "merged_read",
    "open_entry",
    "render_entry",
    "subject_filters",
]

MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100


def _tag(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


EVENT_TAGS: Final = frozenset(_tag(cls) for cls in EVENT_TYPES)


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which events to list. ``client`` and ``notification`` narrow to one client or one
    notification (in ``tenant`` when given, in any tenant otherwise); ``tenant`` alone lists
    the tenant's whole history; none of them, the whole log. ``since`` / ``until`` bound the
    recorded time (inclusive), ``types`` the tags, ``after`` is the cursor."""

    client: str | None = None
    notification: str | None = None
    tenant: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    types: frozenset[str] = dataclasses.field(default_factory=frozenset)
    after: int = 0
    limit: int = DEFAULT_PAGE

    def __post_init__(self) -> None:
        unknown = sorted(self.types - EVENT_TAGS)
        if unknown:
            raise QueryError("type", f"unknown event types {unknown}; known: {sorted(EVENT_TAGS)}")
        if not 1 <= self.limit <= MAX_PAGE:
            raise QueryError("limit", f"must be 1 to {MAX_PAGE}")
        if self.after < 0:
            raise QueryError("after", "must be a position, 0 or more")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise QueryError(name, "must carry a time zone")
        if self.since and self.until and self.since > self.until:
            raise QueryError("until", "is before since")
        for name in ("client", "notification", "tenant"):
            if getattr(self, name) == "":
                raise QueryError(name, "must not be empty")


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One event as an auditor sees it."""

    position: int
    recorded_at: datetime
    type: str
    tenant_id: str | None
    subject: list[str]
    cause: dict[str, Any]
    data: dict[str, Any] | None
    error: str | None = None


class HistoryPage(msgspec.Struct, kw_only=True):
    """Entries, and the cursor of the next page (None when there is none)."""

    events: list[HistoryEntry]
    next_cursor: int | None


def subject_filters(query: HistoryQuery) -> list[SubjectFilter]:
    """The subject filters whose merged reads hold the query's events.

    A notification's events share its client's subjects (one per kind) with the client's other
    notifications, so a notification query reads them and keeps the notification's own
    (:func:`history`); logs written before that scheme hold them on per-message subjects, read
    too. Without a client, every client's notification subjects of the tenant are read."""
    tenant: str | Wildcard = query.tenant if query.tenant is not None else ANY
    if query.notification is not None:
        client: str | Wildcard = query.client if query.client is not None else ANY
        return [
            (tenant, "notification", client, ANY),
            (tenant, "notification", client, query.notification, ANY),
        ]
    if query.client is not None:
        c = query.client
        return [(tenant, "client", c), (tenant, "notification", c, REST), (tenant, "inbox", c)]
    if query.tenant is not None:
        return [(query.tenant, REST)]
    return [(REST,)]


def render_entry(
    record: RecordedEvent, event: Event | None = None, *, unopened: str = "sealed"
) -> HistoryEntry:
    """``record`` (or ``event``, its decoded and opened form) as a history entry: device tokens
    as fingerprints, leaves as a count, personal fields still sealed as ``unopened``."""
    error = ""
    if event is None:
        try:
            event = decode_event(record.data)
        except msgspec.DecodeError as exc:
            error = f"not a known event: {exc}"
    if event is None:
        return HistoryEntry(
            position=record.position,
            recorded_at=recorded_time(record),
            type="unknown",
            tenant_id=None,
            subject=list(record.subject),
            cause={},
            data=None,
            error=error,
        )
    data: dict[str, Any] = msgspec.to_builtins(event)
    tag = data.pop("type")
    cause = data.pop("cause", {})
    tenant_id = data.pop("tenant_id")
    sealed = sealed_of(event) is not None
    if "sealed" in data:
        if sealed:
            data["sealed"] = unopened
            if isinstance(data.get("raw"), dict):
                data["raw"]["message"] = unopened
        else:
            del data["sealed"]
    if isinstance(event, ClientRegistered):
        del data["token"]
        data["token_fingerprint"] = (
            unopened if sealed else fingerprint(event.token) if event.token else None
        )
    elif isinstance(event, AuditCheckpoint):
        del data["digests"]
        data["leaves"] = event.covered_to - event.covered_from + 1
    return HistoryEntry(
        position=record.position,
        recorded_at=recorded_time(record),
        type=tag,
        tenant_id=tenant_id,
        subject=list(record.subject),
        cause=cause,
        data=data,
    )


async def open_entry(record: RecordedEvent, sealer: Sealer | None) -> HistoryEntry:
    """:func:`render_entry` of ``record`` with its personal fields opened by ``sealer``."""
    if sealer is None:
        return render_entry(record)
    try:
        event = decode_event(record.data)
    except msgspec.DecodeError:
        return render_entry(record)
    return render_entry(record, await sealer.open_any(event), unopened="erased")


class _Tag(msgspec.Struct):
    type: str = ""


class _MessageId(msgspec.Struct):
    message_id: str | None = None


_decode_tag = msgspec.json.Decoder(_Tag).decode
_decode_message_id = msgspec.json.Decoder(_MessageId).decode


def _message_id_of(data: bytes) -> str | None:
    try:
        return _decode_message_id(data).message_id
    except msgspec.DecodeError:
        return None


def _tag_of(data: bytes) -> str:
    try:
        return _decode_tag(data).type
    except msgspec.DecodeError:
        return "unknown"


async def merged_read(
    log: EventLog,
    filters: Sequence[SubjectFilter],
    *,
    from_position: int = 1,
    to_position: int | None = None,
    from_time: datetime | None = None,
) -> AsyncGenerator[RecordedEvent, None]:
    """The events of several filtered reads, in position order (the filters must not overlap)."""
    if len(filters) == 1:
        reader = log.read(
            filters[0], from_position=from_position, to_position=to_position, from_time=from_time
        )
        async with aclosing(_generator(reader)) as events:
            async for event in events:
                yield event
        return
    async with AsyncExitStack() as stack:
        readers = [
            await stack.enter_async_context(
                aclosing(
                    _generator(
                        log.read(
                            f,
                            from_position=from_position,
                            to_position=to_position,
                            from_time=from_time,
                        )
                    )
                )
            )
            for f in filters
        ]
        heads: list[tuple[int, int, RecordedEvent]] = []
        for index, reader in enumerate(readers):
            first = await anext(reader, None)
            if first is not None:
                heads.append((first.position, index, first))
        heapq.heapify(heads)
        while heads:
            _, index, event = heapq.heappop(heads)
            yield event
            following = await anext(readers[index], None)
            if following is not None:
                heapq.heappush(heads, (following.position, index, following))


async def _generator(events: AsyncIterator[RecordedEvent]) -> AsyncGenerator[RecordedEvent, None]:
    try:
        async for event in events:
            yield event
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


async def history(
    log: EventLog,
    query: HistoryQuery,
    *,
    to_position: int | None = None,
    sealer: Sealer | None = None,
) -> AsyncGenerator[HistoryEntry, None]:
    """Every entry the query matches after its cursor, oldest first (no page limit), personal
    fields opened by ``sealer``."""
    async with aclosing(
        merged_read(
            log,
            subject_filters(query),
            from_position=query.after + 1,
            to_position=to_position,
            from_time=query.since,
        )
    ) as records:
        async for record in records:
            if query.until is not None or query.since is not None:
                when = recorded_time(record)
                if query.until is not None and when > query.until:
                    return
                if query.since is not None and when < query.since:
                    continue
            if query.types and _tag_of(record.data) not in query.types:
                continue
            if query.notification is not None and (
                _message_id_of(record.data) != query.notification
            ):
                continue
            yield await open_entry(record, sealer)


async def history_page(
    log: EventLog, query: HistoryQuery, *, sealer: Sealer | None = None
) -> HistoryPage:
    """Up to ``query.limit`` entries, and the cursor of the next page when there are more."""
    entries: list[HistoryEntry] = []
    more = False
    async with aclosing(history(log, query, sealer=sealer)) as found:
        async for entry in found:
            if len(entries) == query.limit:
                more = True
                break
            entries.append(entry)
    return HistoryPage(events=entries, next_cursor=entries[-1].position if more else None)


async def follow_history(
    log: EventLog,
    query: HistoryQuery,
    stop: asyncio.Event,
    *,
    poll_interval: float = 1.0,
    sealer: Sealer | None = None,
) -> AsyncGenerator[HistoryEntry, None]:
    """The query's entries, then new ones as they are appended, until ``stop`` is set.

    Polls the log's last position every ``poll_interval`` seconds (waiting on ``stop`` in
    between) and reads only what was appended since; ``until`` ends the stream once passed.
    """
    scanned = query.after
    while not stop.is_set():
        head = await log.last_position()
        if head > scanned:
            since_scanned = dataclasses.replace(query, after=scanned)
            async with aclosing(
                history(log, since_scanned, to_position=head, sealer=sealer)
            ) as found:
                async for entry in found:
                    yield entry
                    if stop.is_set():
                        return
            scanned = head
        if query.until is not None and datetime.now(query.until.tzinfo) > query.until:
            return
        try:
            async with asyncio.timeout(poll_interval):
                await stop.wait()
        except TimeoutError:
            pass
