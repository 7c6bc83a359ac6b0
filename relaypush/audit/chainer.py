"""The chainer: computes the hash chain behind the writers and appends signed checkpoints.

Writers append as they always do; the chainer reads the log in position order (polling from the
last position it chained, so it never holds a writer back), extends the chain and, every
``every_events`` events (checkpoints not counted) or ``every_seconds`` after the first event not
yet covered, appends an ``audit.checkpoint`` signing the head. Checkpoints are appended to their
own subject at the version of the last checkpoint the chainer knows, so of two chainers only one
appends each checkpoint; the other sees it and carries on from it. The chainer keeps nothing
between runs: it starts from the last checkpoint in the log (its head is the link at its covered
position) and rechains what came after.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import msgspec
import structlog

from eventstore import EventLog, EventLogUnavailable, EventStoreError, RecordedEvent
from eventstore.errors import WrongExpectedVersion
from relaypush.audit.chain import GENESIS, ChainWindow, checkpoint_message
from relaypush.audit.keys import SigningKey
from relaypush.config import Settings
from relaypush.domain.events import AUDIT_TENANT, AuditCheckpoint, decode_event, encode_event
from relaypush.domain.streams import AUDIT_CHECKPOINT_SUBJECT
from relaypush.metrics import REGISTRY, Registry

__all__ = ["MAX_CHECKPOINT_EVENTS", "Chainer", "decode_checkpoint"]

log = structlog.get_logger(__name__)

MAX_CHECKPOINT_EVENTS: Final = 50_000
"""Most events one checkpoint covers (its leaves must fit in one message)."""
MIN_BACKOFF: Final = 0.1
MAX_BACKOFF: Final = 30.0


def decode_checkpoint(data: bytes) -> AuditCheckpoint:
    """The checkpoint in ``data``; raises ``msgspec.ValidationError`` for anything else."""
    event = decode_event(data)
    if not isinstance(event, AuditCheckpoint):
        raise msgspec.ValidationError(f"expected audit.checkpoint, found {type(event).__name__}")
    return event


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Chainer:
    """Chains ``log`` and signs checkpoints with ``signing_key``; see the module docstring."""

    def __init__(
        self,
        log: EventLog,
        signing_key: SigningKey,
        *,
        every_events: int = 1000,
        every_seconds: float = 10.0,
        poll_interval: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        metrics: Registry = REGISTRY,
    ) -> None:
        if not 1 <= every_events <= MAX_CHECKPOINT_EVENTS:
            raise ValueError(f"every_events must be 1 to {MAX_CHECKPOINT_EVENTS}")
        if every_seconds <= 0 or poll_interval <= 0:
            raise ValueError("every_seconds and poll_interval must be positive")
        self.log = log
        self._key = signing_key
        self._every_events = every_events
        self._every_seconds = every_seconds
        self._poll = poll_interval
        self._monotonic = monotonic
        self._clock = clock
        self._new_id = new_id
        self._window: ChainWindow | None = None
        self._covered = 0  # the last position the last known checkpoint covers
        self._version = 0  # the position of that checkpoint (its subject's version)
        self._uncovered = 0  # events after _covered, checkpoints not counted
        self._checkpoints_after: list[int] = []  # positions of checkpoints after _covered
        self._chained_gauge = metrics.gauge(
            "relaypush_audit_chained_position", "Last log position the audit chainer chained"
        )
        self._covered_gauge = metrics.gauge(
            "relaypush_audit_covered_position", "Last log position covered by a checkpoint"
        )
        self._appended = metrics.counter(
            "relaypush_audit_checkpoints_total", "Checkpoints this chainer appended"
        )
        self._uncovered_since = 0.0  # when the first of them was chained

    @classmethod
    def from_settings(cls, log: EventLog, settings: Settings) -> Chainer | None:
        """The chainer ``settings`` ask for, None when no signing key is configured."""
        if not settings.audit_signing_key:
            return None
        return cls(
            log,
            SigningKey.from_hex(settings.audit_signing_key),
            every_events=settings.audit_checkpoint_interval,
            every_seconds=settings.audit_checkpoint_seconds,
        )

    @property
    def position(self) -> int:
        """The last position chained (0 before the first run)."""
        return 0 if self._window is None else self._window.position

    @property
    def covered(self) -> int:
        """The last position covered by a checkpoint the chainer knows of."""
        return self._covered

    async def run(self, stop: asyncio.Event) -> None:
        """Chain and checkpoint until ``stop`` is set; a lost log is waited for, not fatal."""
        backoff = MIN_BACKOFF
        log.info("audit_chainer_started", key_id=self._key.key_id)
        while not stop.is_set():
            try:
                await self.catch_up(checkpoint=False)
                if self._due_by_time():
                    await self.checkpoint()
                backoff = MIN_BACKOFF
                wait = self._poll
                if self._uncovered:
                    due = self._uncovered_since + self._every_seconds - self._monotonic()
                    wait = max(0.0, min(wait, due))
            except (EventLogUnavailable, EventStoreError) as exc:
                log.warning("audit_chainer_log_unavailable", error=str(exc), retry_in=backoff)
                wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            try:
                async with asyncio.timeout(wait):
                    await stop.wait()
            except TimeoutError:
                pass
        log.info("audit_chainer_stopped", position=self.position, covered=self._covered)

    async def catch_up(self, *, checkpoint: bool = True) -> AuditCheckpoint | None:
        """Chain every event in the log now (checkpointing every ``every_events`` on the way);
        then, with ``checkpoint``, cover whatever is left. Returns the last checkpoint this
        call appended, if any."""
        if self._window is None:
            await self._resume()
        window = self._window
        assert window is not None
        appended: AuditCheckpoint | None = None
        async for record in self.log.read(from_position=window.position + 1):
            self._chain(window, record)
            if self._uncovered >= self._every_events:
                appended = await self.checkpoint() or appended
        if checkpoint:
            appended = await self.checkpoint() or appended
        self._chained_gauge.set(window.position)
        self._covered_gauge.set(self._covered)
        return appended

    async def checkpoint(self) -> AuditCheckpoint | None:
        """Append a checkpoint covering everything chained and not covered yet (None when
        nothing is, or when another chainer appended one first)."""
        window = self._window
        if window is None or not self._uncovered:
            return None
        first, last = self._covered + 1, window.position
        leaves = window.leaves(first, last)
        head = window.head
        key_id = self._key.key_id
        signature = self._key.sign(checkpoint_message(first, last, head, leaves, key_id))
        event = AuditCheckpoint(
            event_id=self._new_id(),
            occurred_at=self._clock(),
            tenant_id=AUDIT_TENANT,
            covered_from=first,
            covered_to=last,
            head=head.hex(),
            digests=leaves,
            key_id=key_id,
            signature=signature.hex(),
        )
        try:
            result = await self.log.append(
                AUDIT_CHECKPOINT_SUBJECT, encode_event(event), expected_version=self._version
            )
        except WrongExpectedVersion:
            log.info("audit_checkpoint_lost_race", covered_to=last)
            await self._adopt_last()
            return None
        self._version = max(self._version, result.position)
        self._mark_covered(last)
        self._appended.inc()
        log.debug("audit_checkpoint", covered_to=last, position=result.position, key_id=key_id)
        return event

    def _due_by_time(self) -> bool:
        return bool(self._uncovered) and (
            self._monotonic() - self._uncovered_since >= self._every_seconds
        )

    def _chain(self, window: ChainWindow, record: RecordedEvent) -> None:
        position = record.position
        if position != window.position + 1:
            log.error("audit_log_gap", expected=window.position + 1, found=position)
        if position <= self._covered:
            window.skip(position, record.subject, record.data)
        else:
            window.add(position, record.subject, record.data)
        if record.subject == AUDIT_CHECKPOINT_SUBJECT:
            if position > self._covered:
                self._checkpoints_after.append(position)
            self._saw_checkpoint(record)
        elif position > self._covered:
            if not self._uncovered:
                self._uncovered_since = self._monotonic()
            self._uncovered += 1

    def _saw_checkpoint(self, record: RecordedEvent) -> None:
        """A checkpoint in the log (this chainer's or another's): carry on from it."""
        try:
            checkpoint = decode_checkpoint(record.data)
        except msgspec.DecodeError as exc:
            log.error("audit_checkpoint_unreadable", position=record.position, error=str(exc))
            return
        self._version = max(self._version, record.position)
        if checkpoint.covered_to <= self._covered:
            return
        window = self._window
        assert window is not None
        if window.start <= checkpoint.covered_to <= window.position:
            ours = window.link_at(checkpoint.covered_to).hex()
            if ours != checkpoint.head:
                log.error(
                    "audit_checkpoint_head_differs",
                    position=record.position,
                    covered_to=checkpoint.covered_to,
                    key_id=checkpoint.key_id,
                )
        self._mark_covered(checkpoint.covered_to)

    async def _adopt_last(self) -> None:
        """After losing a race: take the checkpoint that won as the last one."""
        record = await self.log.last(AUDIT_CHECKPOINT_SUBJECT)
        if record is None:
            return
        self._version = max(self._version, record.position)
        try:
            checkpoint = decode_checkpoint(record.data)
        except msgspec.DecodeError:
            return
        if checkpoint.covered_to > self._covered:
            self._mark_covered(checkpoint.covered_to)

    def _mark_covered(self, position: int) -> None:
        window = self._window
        assert window is not None
        self._covered = position
        window.forget_through(position)
        self._checkpoints_after = [p for p in self._checkpoints_after if p > position]
        self._uncovered = max(0, window.position - position - len(self._checkpoints_after))
        if self._uncovered:
            self._uncovered_since = self._monotonic()

    async def _resume(self) -> None:
        """Start from the last checkpoint in the log (or the genesis link when none)."""
        record = await self.log.last(AUDIT_CHECKPOINT_SUBJECT)
        self._window = ChainWindow(GENESIS, 0)
        self._covered = self._version = self._uncovered = 0
        self._checkpoints_after = []
        if record is None:
            log.info("audit_chain_from_genesis")
            return
        self._version = record.position
        try:
            checkpoint = decode_checkpoint(record.data)
            head = bytes.fromhex(checkpoint.head)
        except (msgspec.DecodeError, ValueError) as exc:
            log.error("audit_checkpoint_unreadable", position=record.position, error=str(exc))
            return
        self._covered = checkpoint.covered_to
        public = self._key.public_key
        message = checkpoint_message(
            checkpoint.covered_from, checkpoint.covered_to, head, checkpoint.digests, public.key_id
        )
        if checkpoint.key_id == public.key_id and not public.verify(
            _hex_or_empty(checkpoint.signature), message
        ):
            # not ours after all: rechain from the start rather than build on a forged head
            log.error("audit_checkpoint_signature_invalid", position=record.position)
            return
        self._window = ChainWindow(head, checkpoint.covered_to)
        log.info(
            "audit_chain_resumed", covered_to=checkpoint.covered_to, checkpoint=record.position
        )


def _hex_or_empty(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""
