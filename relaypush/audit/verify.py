"""Verification of the hash chain: every link, every checkpoint signature, the first break.

:class:`ChainVerifier` takes the events of a whole log in the order they are read (from the live
log or an export file), recomputes the chain (see :mod:`relaypush.audit.chain`) and checks each
``audit.checkpoint`` as it comes: its signature (by a key it was given, found by key id), that it
covers the positions right after the previous one, that the leaves it lists are those of the
events at those positions, and that its head is the recomputed link. It stops at the first
break and names it:

    dropped          a position is missing (an event was removed)
    reordered        positions come out of order, or events sit at other positions than
                     the ones a checkpoint recorded for them
    forged           an event no checkpoint recorded sits where another was, or a position
                     appears twice
    altered          the event at a position is not the one a checkpoint recorded there
    bad_signature    a checkpoint is not signed by a known key
    head_mismatch    a checkpoint's head is not the recomputed link (every leaf matching)
    malformed_checkpoint  an event on the checkpoint subject that is not a well-formed
                     checkpoint following the previous one

Everything up to the last good checkpoint's covered position is *protected*; what comes after
is chained but no signature covers it yet, and :class:`VerifyReport` says so.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from eventstore import RecordedEvent
from relaypush.audit.chain import GENESIS, LEAF_SIZE, checkpoint_message, subject_bytes
from relaypush.audit.chainer import decode_checkpoint
from relaypush.audit.keys import PublicKey
from relaypush.domain.streams import AUDIT_CHECKPOINT_SUBJECT

__all__ = ["Break", "BreakKind", "ChainVerifier", "VerifyReport", "verify"]

_LINK: Final = 32


class BreakKind(enum.StrEnum):
    """What broke; see the module docstring."""

    DROPPED = "dropped"
    REORDERED = "reordered"
    FORGED = "forged"
    ALTERED = "altered"
    BAD_SIGNATURE = "bad_signature"
    HEAD_MISMATCH = "head_mismatch"
    MALFORMED_CHECKPOINT = "malformed_checkpoint"


@dataclass(frozen=True, slots=True)
class Break:
    """The first place the log stops being what its checkpoints signed."""

    position: int
    kind: BreakKind
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a walk of the log found.

    ``protected_upto`` is the last position covered by a good checkpoint (0: none); events
    after it were chained but nothing signed them yet. ``head`` is the link at
    ``last_position``.
    """

    events: int
    last_position: int
    head: str
    checkpoints: int
    protected_upto: int
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def unprotected(self) -> int:
        """Events after the last good checkpoint's coverage (up to the break, if any)."""
        return max(0, self.last_position - self.protected_upto)

    def describe(self) -> str:
        """A few lines for people."""
        lines: list[str] = []
        if self.broken is not None:
            b = self.broken
            lines.append(f"BROKEN at position {b.position}: {b.kind}: {b.detail}")
            lines.append(
                f"checked {self.events} events before the break, {self.checkpoints} good "
                f"checkpoints, protected up to position {self.protected_upto}"
            )
            return "\n".join(lines)
        lines.append(
            f"OK: {self.events} events up to position {self.last_position}, "
            f"{self.checkpoints} checkpoints verified"
        )
        if self.protected_upto == 0:
            lines.append("no checkpoint: nothing is protected yet")
        else:
            lines.append(f"protected up to position {self.protected_upto}")
        if self.unprotected:
            lines.append(
                f"positions {self.protected_upto + 1}..{self.last_position} "
                f"({self.unprotected} events) are not yet covered by a checkpoint"
            )
        lines.append(f"chain head at {self.last_position}: {self.head}")
        return "\n".join(lines)


class ChainVerifier:
    """Feed it a whole log in read order (:meth:`feed`), then ask for the :meth:`report`."""

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self._keys = {key.key_id: key for key in keys}
        self._link = GENESIS
        self._next = 1  # the position the next event must have; 0 once broken or after a gap
        self._last = 0  # the last position chained, while _next is 0
        self._start = 1  # first position whose link and leaf are kept
        self._links = bytearray()
        self._leaves = bytearray()
        self._checkpoints = 0
        self._protected = 0
        self._gap: tuple[int, int] | None = None  # (missing position, position found instead)
        self._broken: Break | None = None

    @property
    def broken(self) -> Break | None:
        return self._broken

    def feed(self, position: int, subject: Sequence[str], data: bytes) -> bool:
        """Take the next event; False once the chain is broken (later events are ignored)."""
        if position != self._next:
            return self._out_of_place(position)
        inner = _sha256(data).digest() + subject_bytes(subject)
        self._link = link = _sha256(self._link + _pack(position) + inner).digest()
        self._links += link
        self._leaves += _sha256(inner).digest()[:LEAF_SIZE]
        self._next = position + 1
        if subject == AUDIT_CHECKPOINT_SUBJECT:
            self._check(position, data)
            return self._broken is None
        return True

    def report(self) -> VerifyReport:
        """The outcome so far (a position left missing at the end is a drop)."""
        if self._gap is not None and self._broken is None:
            missing, found = self._gap
            self._break(missing, BreakKind.DROPPED, _missing(missing, found))
        last = self._next - 1 if self._next else self._last
        return VerifyReport(
            events=last,  # positions start at 1 and every one was chained
            last_position=last,
            head=self._link.hex(),
            checkpoints=self._checkpoints,
            protected_upto=self._protected,
            broken=self._broken,
        )

    def _out_of_place(self, position: int) -> bool:
        if self._broken is not None:
            return False
        if self._gap is not None:
            missing, found = self._gap
            if position == missing:
                self._break(
                    missing,
                    BreakKind.REORDERED,
                    f"position {missing} comes after position {found}: events were reordered",
                )
            else:
                self._break(missing, BreakKind.DROPPED, _missing(missing, found))
            return False
        expected = self._next
        self._last, self._next = expected - 1, 0
        if position > expected:
            self._gap = (expected, position)  # decided by the next event: late, or gone
            return True
        if position == expected - 1:
            self._break(
                position,
                BreakKind.FORGED,
                f"a second event claims position {position}: one of them was forged",
            )
        else:
            self._break(
                position,
                BreakKind.REORDERED,
                f"position {position} comes after position {expected - 1}: events were reordered",
            )
        return False

    def _break(self, position: int, kind: BreakKind, detail: str) -> None:
        if self._broken is None:
            self._broken = Break(position, kind, detail)
            if self._next:
                self._last, self._next = self._next - 1, 0

    def _check(self, position: int, data: bytes) -> None:
        """Check the checkpoint just chained at ``position``."""
        try:
            checkpoint = decode_checkpoint(data)
            head = bytes.fromhex(checkpoint.head)
            signature = bytes.fromhex(checkpoint.signature)
        except (msgspec.DecodeError, ValueError) as exc:
            self._break(position, BreakKind.MALFORMED_CHECKPOINT, f"unreadable checkpoint: {exc}")
            return
        first, last = checkpoint.covered_from, checkpoint.covered_to
        key = self._keys.get(checkpoint.key_id)
        if key is None:
            known = ", ".join(sorted(self._keys)) or "none"
            self._break(
                position,
                BreakKind.BAD_SIGNATURE,
                f"checkpoint signed by key {checkpoint.key_id!r}, not a known key ({known})",
            )
            return
        message = checkpoint_message(first, last, head, checkpoint.digests, checkpoint.key_id)
        if not key.verify(signature, message):
            self._break(
                position,
                BreakKind.BAD_SIGNATURE,
                f"the signature of the checkpoint covering {first}..{last} is not valid "
                f"for key {checkpoint.key_id}",
            )
            return
        if first != self._protected + 1 or last < first or last >= position:
            self._break(
                position,
                BreakKind.MALFORMED_CHECKPOINT,
                f"checkpoint covers {first}..{last}; expected it to start at "
                f"{self._protected + 1} and end before {position}",
            )
            return
        if len(checkpoint.digests) != (last - first + 1) * LEAF_SIZE:
            self._break(
                position,
                BreakKind.MALFORMED_CHECKPOINT,
                f"checkpoint covers {last - first + 1} positions but lists "
                f"{len(checkpoint.digests) // LEAF_SIZE} leaves",
            )
            return
        offset = first - self._start
        ours = self._leaves[offset * LEAF_SIZE : (last - self._start + 1) * LEAF_SIZE]
        if ours != checkpoint.digests:
            self._mismatch(first, checkpoint.digests, offset)
            return
        link = self._links[(last - self._start) * _LINK : (last - self._start + 1) * _LINK]
        if link != head:
            self._break(
                position,
                BreakKind.HEAD_MISMATCH,
                f"the checkpoint's head for position {last} is not the chain's, though every "
                f"event {first}..{last} is the one it recorded",
            )
            return
        self._checkpoints += 1
        self._protected = last
        drop = last - self._start + 1
        del self._links[: drop * _LINK]
        del self._leaves[: drop * LEAF_SIZE]
        self._start = last + 1

    def _mismatch(self, first: int, recorded: bytes, offset: int) -> None:
        """Name the first position whose leaf is not the recorded one, and how it differs."""
        ours = [
            bytes(self._leaves[i : i + LEAF_SIZE])
            for i in range(offset * LEAF_SIZE, len(self._leaves), LEAF_SIZE)
        ]
        theirs = [recorded[i : i + LEAF_SIZE] for i in range(0, len(recorded), LEAF_SIZE)]
        index = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
        position = first + index
        found, wanted = ours[index], theirs[index]
        found_later = found in set(theirs[index + 1 :])
        wanted_later = wanted in set(ours[index + 1 :])
        if found_later and wanted_later:
            kind = BreakKind.REORDERED
            detail = f"the event at {position} was recorded at another position: reordered"
        elif wanted_later:
            kind = BreakKind.FORGED
            detail = (
                f"the event at {position} was never recorded, and the one recorded there "
                "comes later: an event was inserted"
            )
        elif found_later:
            kind = BreakKind.DROPPED
            detail = (
                f"the event recorded at {position} is gone and later events moved up: "
                "an event was dropped"
            )
        else:
            kind = BreakKind.ALTERED
            detail = (
                f"the event at {position} is not the one recorded there: "
                "its bytes or its subject changed"
            )
        self._break(position, kind, detail)


def _missing(missing: int, found: int) -> str:
    last = found - 1
    span = f"position {missing} is" if last == missing else f"positions {missing}..{last} are"
    return f"{span} missing (the next is {found}): an event was dropped"


_sha256 = hashlib.sha256
_pack = struct.Struct(">Q").pack


async def verify(
    events: AsyncIterable[RecordedEvent] | Iterable[RecordedEvent], keys: Iterable[PublicKey]
) -> VerifyReport:
    """Walk ``events`` (a whole log: ``EventLog.read()``, or :func:`read_export`) and check it
    with ``keys``; stops reading at the first break."""
    verifier = ChainVerifier(keys)
    feed = verifier.feed
    if isinstance(events, AsyncIterable):
        try:
            async for event in events:
                if not feed(event.position, event.subject, event.data):
                    break
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()
    else:
        for event in events:
            if not feed(event.position, event.subject, event.data):
                break
    return verifier.report()
