"""Batches of events as the read models take them: decoded, positioned, in position order.

Records whose bytes are not a known event (a tag added by a newer release, or damage) are
skipped with a log line and never stop a projection: the checkpoint still moves past them. The
appliers write a batch with a handful of statements whatever its size, each reading its rows
from one JSON parameter (:func:`recordset`) with ``json_to_recordset``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import structlog

from eventstore import RecordedEvent
from relaypush.domain.events import AnyEvent, Event, decode_event

__all__ = [
    "Batch",
    "DecodedBatch",
    "Opener",
    "PositionedEvent",
    "decode_records",
    "recordset",
]

log = structlog.get_logger(__name__)
_encoder = msgspec.json.Encoder()
_decode_many = msgspec.json.Decoder(list[AnyEvent]).decode
_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # an escaped NUL, not an escaped backslash

PositionedEvent = tuple[int, Event]
"""An event and its position in the log."""

Batch = Sequence[PositionedEvent]
"""What every applier takes: events in ascending position order."""


class Opener(Protocol):
    """Opens the personal fields events carry sealed (``relaypush.privacy.Sealer``).

    Takes and returns events in position order; an event it cannot open (its client's key was
    destroyed) comes back still sealed, and the read models store its personal fields as null,
    as they do from ``client.erased`` on. Without an opener every sealed event reads so.
    """

    async def open_batch(self, events: Sequence[PositionedEvent]) -> list[PositionedEvent]: ...


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The decodable events of some records, and the highest position among all of them."""

    events: list[PositionedEvent] = field(default_factory=list)
    last_position: int = 0
    skipped: int = 0


def decode_records(records: Iterable[RecordedEvent]) -> DecodedBatch:
    """Decode records (in any order, repeats allowed) into events in position order, each
    position once, skipping unknown ones.

    The whole batch is decoded by one call (the records' bytes framed as one JSON array); only
    when that fails, or yields a different number of events than records, is each record
    decoded alone to find and skip the bad ones.
    """
    ordered = _in_order(records)
    if not ordered:
        return DecodedBatch()
    last = ordered[-1].position
    try:
        events = _decode_many(b"[" + b",".join([r.data for r in ordered]) + b"]")
    except msgspec.DecodeError:
        return _decode_each(ordered)
    if len(events) != len(ordered):
        return _decode_each(ordered)
    return DecodedBatch(list(zip([r.position for r in ordered], events, strict=True)), last)


def _decode_each(ordered: list[RecordedEvent]) -> DecodedBatch:
    events: list[PositionedEvent] = []
    skipped = 0
    for record in ordered:
        try:
            event = decode_event(record.data)
        except msgspec.DecodeError as exc:
            skipped += 1
            log.warning(
                "projection_event_skipped",
                position=record.position,
                subject=".".join(record.subject[:2]),
                error=str(exc),
            )
            continue
        events.append((record.position, event))
    return DecodedBatch(events, ordered[-1].position, skipped)


def _in_order(records: Iterable[RecordedEvent]) -> list[RecordedEvent]:
    """The records by ascending position, without repeats (a redelivery inside one batch)."""
    ordered = list(records)
    if all(ordered[i].position < ordered[i + 1].position for i in range(len(ordered) - 1)):
        return ordered
    unique = {record.position: record for record in ordered}
    return [unique[position] for position in sorted(unique)]


def recordset(rows: Sequence[object]) -> str:
    """Rows (msgspec Structs) as the JSON text ``json_to_recordset`` reads: one object per row,
    keyed by field name. One parameter per statement whatever the batch size, encoded in C:
    far cheaper than a parameter per value or arrays escaped in Python.

    PostgreSQL text cannot hold NUL, so a NUL inside a value becomes U+FFFD (the same on every
    replay) rather than failing the batch, and with it the projection, forever.
    """
    text = _encoder.encode(rows).decode()
    if "\\u0000" in text:
        text = _NUL.sub(r"\1\\ufffd", text)
    return text
