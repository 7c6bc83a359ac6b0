"""The hash chain over the log, and the canonical bytes a checkpoint signs.

For the event at position ``n`` (every event of the stream, checkpoints included, in position
order)::

    link_0 = SHA-256("relaypush audit chain v1")
    link_n = SHA-256(link_{n-1} ‖ n as 8 bytes big-endian ‖ SHA-256(stored bytes) ‖ subject)

where ``subject`` is the JSON array of the subject's tokens, compact, UTF-8 (what
``msgspec.json.encode`` writes: ``["0000-0000-0000-0000","client","wallet-1"]``). The stream
prefix is not part of it, so a log imported under another prefix keeps its chain. Each event's
*leaf*, ``SHA-256(SHA-256(stored bytes) ‖ subject)`` cut to 8 bytes, is what a checkpoint lists
for each position it covers, so a verifier can say which event broke the chain and how.

The chain covers the stored bytes, so fields encrypted inside events (and later made unreadable
by destroying the key) leave it intact. It does not cover the recorded time, the idempotency key
or the headers: they are the log's metadata, not the event.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Final

import msgspec

__all__ = [
    "GENESIS",
    "LEAF_SIZE",
    "ChainWindow",
    "checkpoint_message",
    "leaf",
    "next_link",
    "subject_bytes",
]

GENESIS: Final = hashlib.sha256(b"relaypush audit chain v1").digest()
LEAF_SIZE: Final = 8
_LINK_SIZE: Final = 32
_CHECKPOINT_LABEL: Final = b"relaypush audit checkpoint v1\n"

_sha256 = hashlib.sha256
_position = struct.Struct(">Q").pack
_range = struct.Struct(">QQ").pack
subject_bytes = msgspec.json.encode
"""The encoded subject the chain covers: the JSON array of its tokens."""


def next_link(previous: bytes, position: int, subject: Sequence[str], data: bytes) -> bytes:
    """The link of the event at ``position`` after the link ``previous``."""
    return _sha256(
        previous + _position(position) + _sha256(data).digest() + subject_bytes(subject)
    ).digest()


def leaf(subject: Sequence[str], data: bytes) -> bytes:
    """What a checkpoint lists for one event: SHA-256 of its bytes' digest and subject, cut."""
    return _sha256(_sha256(data).digest() + subject_bytes(subject)).digest()[:LEAF_SIZE]


def checkpoint_message(
    covered_from: int, covered_to: int, head: bytes, leaves: bytes, key_id: str
) -> bytes:
    """The canonical bytes a checkpoint's Ed25519 signature covers::

    "relaypush audit checkpoint v1\\n" ‖ covered_from (8 bytes) ‖ covered_to (8 bytes)
        ‖ head (32 bytes) ‖ SHA-256(leaves) ‖ key id (UTF-8)
    """
    return (
        _CHECKPOINT_LABEL
        + _range(covered_from, covered_to)
        + head
        + _sha256(leaves).digest()
        + key_id.encode()
    )


class ChainWindow:
    """The chain walked up to ``position``, keeping the link and leaf of every position from
    ``start`` on (what the next checkpoint covers or checks) and none before."""

    __slots__ = ("_leaves", "_links", "head", "position", "start")

    def __init__(self, head: bytes = GENESIS, position: int = 0) -> None:
        self.head = head
        self.position = position
        self.start = position + 1
        self._links = bytearray()
        self._leaves = bytearray()

    def add(self, position: int, subject: Sequence[str], data: bytes) -> None:
        """Chain the event at ``position`` and keep its link and leaf. Positions skipped over
        (a gap, which a verifier reports) are kept as zero bytes, so offsets stay aligned."""
        missing = position - self.position - 1
        if missing > 0:
            self._links += bytes(_LINK_SIZE * missing)
            self._leaves += bytes(LEAF_SIZE * missing)
        digest = _sha256(data).digest() + subject_bytes(subject)
        self.head = _sha256(self.head + _position(position) + digest).digest()
        self.position = position
        self._links += self.head
        self._leaves += _sha256(digest).digest()[:LEAF_SIZE]

    def skip(self, position: int, subject: Sequence[str], data: bytes) -> None:
        """Chain the event at ``position`` without keeping anything (already covered)."""
        self.head = next_link(self.head, position, subject, data)
        self.position = position
        self.start = position + 1
        del self._links[:]
        del self._leaves[:]

    def link_at(self, position: int) -> bytes:
        """The link at ``position``, which must be between ``start`` and ``position``."""
        offset = (position - self.start) * _LINK_SIZE
        if position < self.start or position > self.position:
            raise IndexError(f"position {position} is not kept ({self.start}..{self.position})")
        return bytes(self._links[offset : offset + _LINK_SIZE])

    def leaves(self, first: int, last: int) -> bytes:
        """The leaves of ``first..last`` (inside what is kept)."""
        if first < self.start or last > self.position or first > last + 1:
            raise IndexError(
                f"positions {first}..{last} are not kept ({self.start}..{self.position})"
            )
        return bytes(
            self._leaves[(first - self.start) * LEAF_SIZE : (last - self.start + 1) * LEAF_SIZE]
        )

    def forget_through(self, position: int) -> None:
        """Stop keeping positions up to ``position``."""
        drop = min(position, self.position) - self.start + 1
        if drop <= 0:
            return
        del self._links[: drop * _LINK_SIZE]
        del self._leaves[: drop * LEAF_SIZE]
        self.start += drop
