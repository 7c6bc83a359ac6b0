"""Exports of the log as JSON Lines, and their import into an empty log.

One line per stored event, in position order::

    {"position":1,"subject":["0000-0000-0000-0000","client","wallet-1"],
     "recorded_at":"2026-01-01T12:00:00.123456Z","data":"{\\"type\\":\\"client.registered\\",…}"}

``data`` is the stored bytes as text when they are UTF-8 (they always are for relaypush's
events), else ``data_base64`` holds them; ``idempotency_key`` and ``headers`` appear when the
event has them. Either way the bytes come back exactly, which is what the hash chain covers, so
an export verifies offline with the public key alone.

An import appends every line, in order, to an empty log, checking that each lands at its
position. The log gives imported events its own recorded time, so the original one travels in
the header :data:`RECORDED_AT_HEADER`; :func:`recorded_time` reads it back and exports drop it,
so exporting an imported log gives the same file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime
from typing import IO, Final

import msgspec

from eventstore import AppendResult, EventLog, RecordedEvent
from relaypush.audit.errors import ExportFormatError, ImportRefused

__all__ = [
    "RECORDED_AT_HEADER",
    "ExportedEvent",
    "export_line",
    "export_log",
    "import_export",
    "read_export",
    "recorded_time",
]

RECORDED_AT_HEADER: Final = "Audit-Recorded-At"
"""Header an import puts on each event: the time the original log recorded it (ISO 8601)."""

_PIPELINE: Final = 256  # appends in flight during an import


class ExportedEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of an export."""

    position: int
    subject: list[str]
    recorded_at: datetime
    idempotency_key: str | None = None
    headers: dict[str, str] = {}
    data: str | None = None
    data_base64: bytes | None = None

    def stored_bytes(self) -> bytes:
        if self.data is not None:
            return self.data.encode()
        return self.data_base64 or b""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ExportedEvent)


def recorded_time(event: RecordedEvent) -> datetime:
    """When the event was first recorded: the original log's time for an imported event."""
    original = event.headers.get(RECORDED_AT_HEADER) if event.headers else None
    if original is not None:
        try:
            return datetime.fromisoformat(original)
        except ValueError:
            pass
    return event.recorded_at


def export_line(event: RecordedEvent) -> bytes:
    """The export line of ``event``, newline included."""
    headers = dict(event.headers) if event.headers else {}
    headers.pop(RECORDED_AT_HEADER, None)
    try:
        text: str | None = event.data.decode()
        raw: bytes | None = None
    except UnicodeDecodeError:
        text, raw = None, event.data
    line = ExportedEvent(
        position=event.position,
        subject=list(event.subject),
        recorded_at=recorded_time(event),
        idempotency_key=event.idempotency_key,
        headers=headers,
        data=text,
        data_base64=raw,
    )
    return _encoder.encode(line) + b"\n"


async def export_log(
    log: EventLog,
    out: IO[bytes],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every event of ``log`` (as of now) to ``out``; returns how many."""
    count = 0
    chunk: list[bytes] = []
    async for event in log.read():
        chunk.append(export_line(event))
        count += 1
        if len(chunk) >= 1024:
            out.write(b"".join(chunk))
            chunk.clear()
            if progress is not None:
                progress(count)
    out.write(b"".join(chunk))
    return count


def parse_line(line: bytes, number: int) -> RecordedEvent:
    """The event on one export line (``number`` counts from 1, for errors)."""
    try:
        exported = _decoder.decode(line)
    except msgspec.DecodeError as exc:
        raise ExportFormatError(number, str(exc)) from None
    if not exported.subject or (exported.data is None) == (exported.data_base64 is None):
        raise ExportFormatError(number, "needs a subject and exactly one of data, data_base64")
    return RecordedEvent(
        position=exported.position,
        subject=tuple(exported.subject),
        data=exported.stored_bytes(),
        recorded_at=exported.recorded_at,
        idempotency_key=exported.idempotency_key,
        headers=exported.headers,
    )


def read_export(lines: Iterable[bytes]) -> Iterator[RecordedEvent]:
    """The events of an export (an open file in binary mode, or its lines), blank lines
    skipped; raises :class:`ExportFormatError` on a line that is not an exported event."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield parse_line(line, number)


async def import_export(
    log: EventLog,
    events: Iterable[RecordedEvent] | AsyncIterator[RecordedEvent],
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append ``events`` to the empty ``log`` at their own positions; returns how many.

    Raises :class:`ImportRefused` when the log is not empty, when the export does not start at
    position 1 or skips one, or when an event lands elsewhere than its position (another writer
    appended during the import; the log is then not a copy and should be discarded).
    """
    if await log.last_position() != 0:
        raise ImportRefused("the event log is not empty: an export is imported into an empty one")
    count = 0
    pending: list[tuple[int, asyncio.Task[AppendResult]]] = []

    async def settle() -> None:
        for position, task in pending:
            result = await task
            if result.duplicate or result.position != position:
                where = "a duplicate" if result.duplicate else f"position {result.position}"
                raise ImportRefused(f"the event of position {position} landed at {where}")
        pending.clear()

    try:
        async for event in _each(events):
            count += 1
            if event.position != count:
                raise ImportRefused(
                    f"the export holds position {event.position} where {count} was expected"
                )
            headers = dict(event.headers)
            headers[RECORDED_AT_HEADER] = recorded_time(event).isoformat()
            append = log.append(
                event.subject, event.data, idempotency_key=event.idempotency_key, headers=headers
            )
            if count == 1:  # the first request sets the connection up: alone
                pending.append((count, asyncio.ensure_future(append)))
                await settle()
                continue
            pending.append((count, asyncio.ensure_future(append)))
            if len(pending) >= _PIPELINE:
                await settle()
                if progress is not None:
                    progress(count)
        await settle()
    finally:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
    return count


async def _each(
    events: Iterable[RecordedEvent] | AsyncIterator[RecordedEvent],
) -> AsyncIterator[RecordedEvent]:
    if isinstance(events, AsyncIterator):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event
