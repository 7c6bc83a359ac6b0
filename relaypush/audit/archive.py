"""The log's archive: what the stream's limits will drop, kept as compressed JSON Lines segments.

With ``RELAYPUSH_LOG_MAX_AGE`` or ``RELAYPUSH_LOG_MAX_BYTES`` set, the stream drops its oldest
events. Before it does, the :class:`Archiver` copies every event, in position order, into
segment files ``<first>-<last>.jsonl.gz`` (positions zero-padded to 20 digits) in
``RELAYPUSH_ARCHIVE_DIR``: gzip'd lines of the export format (:mod:`relaypush.audit.export`), so
an archive is an export cut in pieces, checkpoints of the hash chain included, and verifies
offline like one. A segment is written to a temporary name, synced, then renamed: a segment that
exists is whole. The archiver keeps no state of its own: it starts again after the last segment.

:class:`ArchivedLog` reads the archive and then the live log as one log (the audit commands,
the chainer), so history, time travel, export and verification go back past the stream's limits.
An event the stream dropped before it was archived (the archiver was down for longer than the
limits allow) is a gap: the archiver says so loudly, and ``audit verify`` reports the chain broken
there.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog

from eventstore import (
    REST,
    AppendResult,
    EventLog,
    RecordedEvent,
    Subject,
    SubjectFilter,
    SubjectFilters,
    Subscription,
)
from eventstore.memory import matches
from relaypush.audit.export import export_line, parse_line, recorded_time
from relaypush.metrics import REGISTRY, Registry

__all__ = ["Archive", "ArchivedLog", "Archiver", "Segment"]

log = structlog.get_logger(__name__)

_SEGMENT: Final = re.compile(r"^(\d{20})-(\d{20})\.jsonl\.gz$")


@dataclass(frozen=True, slots=True)
class Segment:
    """One archive file and the positions it holds (``first`` to ``last``, every one)."""

    first: int
    last: int
    path: Path


class Archive:
    """The segment files of one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def segments(self) -> list[Segment]:
        """Every whole segment, by position."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _SEGMENT.match(name)
            if match is not None:
                found.append(Segment(int(match[1]), int(match[2]), self.directory / name))
        return sorted(found, key=lambda s: s.first)

    def last_position(self) -> int:
        """The last position archived, 0 when nothing is."""
        segments = self.segments()
        return segments[-1].last if segments else 0

    def read(
        self, from_position: int = 1, to_position: int | None = None
    ) -> Iterator[RecordedEvent]:
        """The archived events from ``from_position`` to ``to_position`` (inclusive)."""
        for segment in self.segments():
            if segment.last < from_position or (
                to_position is not None and segment.first > to_position
            ):
                continue
            with gzip.open(segment.path, "rb") as lines:
                for number, line in enumerate(lines, start=1):
                    event = parse_line(line, number)
                    if event.position < from_position:
                        continue
                    if to_position is not None and event.position > to_position:
                        return
                    yield event

    def write(self, events: Sequence[RecordedEvent]) -> Segment:
        """Write ``events`` (consecutive positions) as one segment; returns it once durable."""
        first, last = events[0].position, events[-1].position
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{first:020d}-{last:020d}.jsonl.gz"
        partial = final.with_name(final.name + ".partial")
        with open(partial, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out:
                for event in events:
                    out.write(export_line(event))
            raw.flush()
            os.fsync(raw.fileno())
        partial.rename(final)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return Segment(first, last, final)


class Archiver:
    """Copies the log into an :class:`Archive`, a segment at a time, ahead of its limits.

    A segment is written once ``segment_events`` events are waiting, or once the oldest of them
    has waited ``segment_seconds``; they are read from the log, never held elsewhere, so a
    restart simply reads them again.
    """

    def __init__(
        self,
        event_log: EventLog,
        archive: Archive,
        *,
        segment_events: int = 50_000,
        segment_seconds: float = 600.0,
        poll_interval: float = 5.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Registry = REGISTRY,
    ) -> None:
        self._log = event_log
        self.archive = archive
        self._segment_events = segment_events
        self._segment_seconds = segment_seconds
        self._poll = poll_interval
        self._clock = clock
        self._waiting: list[RecordedEvent] = []
        self._archived = metrics.gauge(
            "relaypush_archive_position", "Last log position written to the archive"
        )
        self._lost = metrics.counter(
            "relaypush_archive_lost_events_total",
            "Events the stream dropped before they could be archived",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Archive until ``stop`` is set; an unreachable log is waited out."""
        log.info("archiver_started", directory=str(self.archive.directory))
        while not stop.is_set():
            try:
                await self.archive_once()
            except Exception as exc:  # the log or the disk: say so, try again later
                log.warning("archive_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._poll)

    async def archive_once(self, *, flush: bool = False) -> int:
        """Read what is new and write every segment that is due (with ``flush``, whatever
        waits); returns the number of events written."""
        after = self._waiting[-1].position if self._waiting else self.archive.last_position()
        first = await self._log.first_position()
        if first > after + 1:
            lost = first - after - 1
            self._lost.inc(lost)
            log.error(
                "archive_gap",
                lost_from=after + 1,
                lost_to=first - 1,
                events=lost,
                hint="the stream dropped events before they were archived: is the archiver "
                "running, and are the stream's limits longer than a segment's time?",
            )
        written = 0
        async for event in self._log.read(from_position=after + 1):
            self._waiting.append(event)
            if len(self._waiting) >= self._segment_events:
                written += await self._write()
        if self._waiting and (flush or self._overdue()):
            written += await self._write()
        return written

    def _overdue(self) -> bool:
        oldest = recorded_time(self._waiting[0])
        return (self._clock() - oldest).total_seconds() >= self._segment_seconds

    async def _write(self) -> int:
        events, self._waiting = self._waiting, []
        started = time.monotonic()
        segment = await asyncio.to_thread(self.archive.write, events)
        self._archived.set(segment.last)
        log.info(
            "archive_segment_written",
            first=segment.first,
            last=segment.last,
            bytes=segment.path.stat().st_size,
            seconds=round(time.monotonic() - started, 2),
        )
        return len(events)


class ArchivedLog:
    """The archive and then the live log, read as one log; writes go to the live log.

    Reads take the archived events up to the archive's last position, then the live log's from
    the position after it, so an event in both is read once.
    """

    def __init__(self, live: EventLog, archive: Archive) -> None:
        self.live = live
        self.archive = archive

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        return await self.live.append(
            subject,
            data,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
            headers=headers,
        )

    async def last(self, subject: Subject) -> RecordedEvent | None:
        found = await self.live.last(subject)
        if found is not None:
            return found
        for event in self.archive.read():
            if event.subject == subject:
                found = event
        return found

    async def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        archived = self.archive.last_position()
        started = from_time is None
        for event in self.archive.read(from_position, to_position):
            if not started:
                assert from_time is not None
                if recorded_time(event) < from_time:
                    continue
                started = True
            if matches(subject_filter, event.subject):
                yield event
        live = self.live.read(
            subject_filter,
            from_position=max(from_position, archived + 1),
            to_position=to_position,
            from_time=None if started and archived else from_time,
        )
        async for event in live:
            yield event

    async def first_position(self) -> int:
        segments = self.archive.segments()
        return segments[0].first if segments else await self.live.first_position()

    async def last_position(self) -> int:
        return max(await self.live.last_position(), self.archive.last_position())

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        return await self.live.subscribe(
            durable,
            subject_filter,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            from_position=from_position,
        )

    async def close(self) -> None:
        """The live log belongs to whoever opened it."""
