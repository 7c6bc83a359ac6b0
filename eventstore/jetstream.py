"""The event log on NATS JetStream: one stream, subjects ``<prefix>.<encoded tokens>``.

Positions are stream sequences, a subject's version is its last sequence. Appends are plain
requests to the stream's subject carrying ``Nats-Msg-Id`` (idempotency key) and
``Nats-Expected-Last-Subject-Sequence`` (expected version), answered by a pub-ack. Reads of one
literal subject use direct gets; other reads and long histories use an ephemeral pull consumer
fetched in large batches; durable subscriptions are durable pull consumers with explicit acks.
Every driver error is translated here into :mod:`eventstore.errors`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from contextlib import aclosing, suppress
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Final, Self, cast

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from eventstore.delivery import SettledOnce
from eventstore.errors import (
    EventLogUnavailable,
    EventStoreError,
    InvalidSubject,
    WrongExpectedVersion,
)
from eventstore.headers import checked_headers
from eventstore.keystore import JetStreamKeyStore
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
from eventstore.once import JetStreamOnce
from eventstore.subjects import decode_subject, encode_filter, encode_subject

__all__ = ["JetStreamEventLog"]

log = structlog.get_logger(__name__)

_MSG_ID: Final = "Nats-Msg-Id"
_EXPECTED_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE: Final = 10071  # JSStreamWrongLastSequenceErrF
_STREAM_NAME_IN_USE: Final = 10058  # JSStreamNameExistErr
_ACTUAL_SEQUENCE = re.compile(r"(\d+)\s*$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_BATCH: Final = 2048  # messages per pull request when reading
_DIRECT_READS: Final = 8  # events of one subject read by direct gets before using a consumer
_PULL_EXPIRES: Final = 10.0  # seconds a read's pull request waits on the server
_MAX_STATUSES: Final = 10  # pull requests in a row that may end empty before a read gives up


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


class JetStreamEventLog:
    """An :class:`~eventstore.log.EventLog` on one JetStream stream.

    Build it with :meth:`connect`, or from a connection the caller owns with
    ``JetStreamEventLog(nc, nc.jetstream(), stream=..., prefix=...)`` followed by
    :meth:`ensure_stream` (appends to a stream that does not exist raise
    :class:`EventLogUnavailable`: nothing answers them).

    Duplicates with an expected version: when an append carries both an idempotency key already
    seen inside the duplicate window and an expected version that no longer holds, nats-server
    2.9 answers "duplicate" while newer servers (2.15 checked) check the version first and
    answer "wrong last sequence". This log makes both agree on the case that matters, the retry
    of an append that went through: when the subject's last event carries the same key, the
    append is reported as a duplicate at that event's position. When other events were stored
    on the subject since, the append raises :class:`WrongExpectedVersion` (a duplicate on 2.9).
    """

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        *,
        stream: str,
        prefix: str,
        request_timeout: float = 5.0,
        owns_connection: bool = False,
    ) -> None:
        if not prefix or any(c in prefix for c in "*> \t\r\n") or ".." in f".{prefix}.":
            raise InvalidSubject(f"invalid subject prefix {prefix!r}")
        self._nc = nc
        self._js = js
        self._stream = stream
        self._prefix = prefix
        self._timeout = request_timeout
        self._owns_connection = owns_connection

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        stream: str,
        prefix: str,
        duplicate_window: float = 300.0,
        replicas: int = 1,
        max_age: float = 0.0,
        max_bytes: int = 0,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
    ) -> Self:
        """Connect to ``url`` (one URL, or several separated by commas for a cluster), giving up
        after ``connect_timeout`` seconds (once connected, the client reconnects for as long as
        it takes), make sure the stream exists (``max_age`` seconds and ``max_bytes`` bound what
        it keeps, 0: unbounded), and own the connection. ``request_timeout``
        bounds each request (append, get, API call)."""
        nc = NATS()
        try:
            async with asyncio.timeout(connect_timeout):
                await nc.connect(
                    servers=[u.strip() for u in url.split(",") if u.strip()],
                    connect_timeout=math.ceil(connect_timeout),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await _quietly(nc.close())
            raise EventLogUnavailable(f"cannot connect to NATS at {url}") from exc
        event_log = cls(
            nc,
            nc.jetstream(timeout=request_timeout),
            stream=stream,
            prefix=prefix,
            request_timeout=request_timeout,
            owns_connection=True,
        )
        try:
            await event_log.ensure_stream(
                duplicate_window=duplicate_window,
                replicas=replicas,
                max_age=max_age,
                max_bytes=max_bytes,
            )
        except BaseException:
            await nc.close()
            raise
        return event_log

    async def ensure_stream(
        self,
        *,
        duplicate_window: float = 300.0,
        replicas: int = 1,
        max_age: float = 0.0,
        max_bytes: int = 0,
    ) -> None:
        """Create the stream, or bring an existing one to this configuration where the server
        allows it (what it refuses to change is left as it is and logged); never fails on an
        existing stream. ``max_age`` (seconds) and ``max_bytes`` make the stream drop its oldest
        events past them (0: keep everything)."""
        age = max(0.0, max_age)
        size = max_bytes if max_bytes > 0 else -1
        wanted = api.StreamConfig(
            name=self._stream,
            subjects=[f"{self._prefix}.>"],
            storage=api.StorageType.FILE,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
            discard=api.DiscardPolicy.OLD,
            max_age=age,
            max_bytes=size,
        )
        try:
            try:
                await self._js.add_stream(wanted)
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
            current = (await self._js.stream_info(self._stream)).config
            changes = {
                key: value
                for key, value in {
                    "subjects": sorted({*(current.subjects or []), f"{self._prefix}.>"}),
                    "deny_delete": True,
                    "deny_purge": True,
                    "allow_direct": True,
                    "duplicate_window": duplicate_window,
                    "num_replicas": replicas,
                    "max_age": age,
                    "max_bytes": size,
                }.items()
                if _differs(getattr(current, key), value)
            }
            if not changes:
                return
            try:
                await self._js.update_stream(current.evolve(**changes))
            except nats.js.errors.BadRequestError as exc:
                log.warning(
                    "stream_update_refused", stream=self._stream, changes=changes, error=str(exc)
                )
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc

    async def append(
        self,
        subject: Subject,
        data: bytes,
        *,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AppendResult:
        """Store ``data`` under ``subject`` once the stream acknowledged it."""
        wire = encode_subject(self._prefix, subject)
        hdrs = checked_headers(headers)
        if idempotency_key is not None:
            hdrs[_MSG_ID] = idempotency_key
        if expected_version is not None:
            hdrs[_EXPECTED_SUBJECT_SEQ] = str(expected_version)
        try:
            reply = await self._nc.request(wire, data, timeout=self._timeout, headers=hdrs or None)
            ack = _decode_ack(reply.data)
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        except msgspec.DecodeError as exc:
            raise EventStoreError(f"unexpected reply to an append: {reply.data[:200]!r}") from exc
        if ack.error is None:
            return AppendResult(position=ack.seq, duplicate=ack.duplicate)
        if ack.error.err_code == _WRONG_LAST_SEQUENCE and expected_version is not None:
            found = _ACTUAL_SEQUENCE.search(ack.error.description)
            actual = int(found.group(1)) if found else None
            if idempotency_key is not None:
                last = await self.last(subject)
                if last is not None and last.idempotency_key == idempotency_key:
                    return AppendResult(position=last.position, duplicate=True)
            raise WrongExpectedVersion(subject, expected_version, actual)
        if ack.error.code == 503:
            raise EventLogUnavailable(ack.error.description)
        raise EventStoreError(f"append refused: {ack.error.description} ({ack.error.err_code})")

    async def last(self, subject: Subject) -> RecordedEvent | None:
        """The last event stored under exactly ``subject`` (a direct get), or None."""
        wire = encode_subject(self._prefix, subject)
        try:
            raw = await self._js.get_last_msg(self._stream, wire, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return self._from_raw(raw)

    async def read(
        self,
        subject_filter: SubjectFilter = (REST,),
        *,
        from_position: int = 1,
        to_position: int | None = None,
        from_time: datetime | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events matching the filter in position order, up to ``to_position`` (inclusive) or
        to the last position at the time of the call, whichever comes first; with
        ``from_time``, from the first event the stream stored at or after it (the consumer
        starts by time and the positions before ``from_position`` are skipped)."""
        wire = encode_filter(self._prefix, subject_filter)
        start = max(from_position, 1)
        if from_time is not None and from_time.tzinfo is None:
            raise ValueError("from_time must be timezone-aware")
        literal = not any(isinstance(token, Wildcard) for token in subject_filter)
        if literal:
            newest = await self.last(cast(Subject, subject_filter))
            end = 0 if newest is None else newest.position
        else:
            end = await self.last_position()
        if to_position is not None:
            end = min(end, to_position)
        if literal and from_time is None:
            for _ in range(_DIRECT_READS):
                if start > end:
                    return
                event = await self._next_by_subject(wire, start)
                if event is None or event.position > end:
                    return
                yield event
                start = event.position + 1
        if start <= end:
            async with aclosing(self._consume(wire, start, end, from_time)) as events:
                async for event in events:
                    yield event

    async def first_position(self) -> int:
        """The stream's first sequence, 0 when it is empty."""
        try:
            info = await self._js.stream_info(self._stream)
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return info.state.first_seq if info.state.messages else 0

    async def last_position(self) -> int:
        """The stream's last sequence, 0 when it is empty."""
        try:
            info = await self._js.stream_info(self._stream)
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return info.state.last_seq

    async def subscribe(
        self,
        durable: str,
        subject_filter: SubjectFilters = (REST,),
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        from_position: int | None = None,
    ) -> Subscription:
        """Bind the durable pull consumer ``durable``, creating it when missing; an existing one
        keeps its place and is updated to the filters, ``ack_wait`` and ``max_ack_pending`` asked
        for (what the server refuses to change is logged and left); ``from_position`` deletes it
        and creates it anew there."""
        wires = [encode_filter(self._prefix, one) for one in filters_of(subject_filter)]
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=-1,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        if len(wires) == 1:
            config.filter_subject = wires[0]
        else:
            config.filter_subjects = wires
        try:
            if from_position is not None:
                config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = max(from_position, 1)
                with suppress(nats.js.errors.NotFoundError):
                    await self._js.delete_consumer(self._stream, durable)
                await self._js.add_consumer(self._stream, config)
            else:
                await self._create_or_update(durable, config)
            psub = await self._js.pull_subscribe_bind(durable=durable, stream=self._stream)
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return _JetStreamSubscription(self, psub, durable)

    async def _create_or_update(self, durable: str, config: api.ConsumerConfig) -> None:
        """Create the durable, or bring an existing one to ``config`` where it differs in what
        may change (filters, ack wait, max ack pending); its place in the log is kept."""
        try:
            current = (await self._js.consumer_info(self._stream, durable)).config
        except nats.js.errors.NotFoundError:
            await self._js.add_consumer(self._stream, config)
            return
        wanted = {
            "filter_subject": config.filter_subject,
            "filter_subjects": config.filter_subjects,
            "ack_wait": config.ack_wait,
            "max_ack_pending": config.max_ack_pending,
        }
        have = {
            "filter_subject": current.filter_subject or None,
            "filter_subjects": current.filter_subjects or None,
            "ack_wait": current.ack_wait,
            "max_ack_pending": current.max_ack_pending,
        }
        if wanted == have:
            return
        updated = current.evolve(**wanted)
        try:
            await self._js.add_consumer(self._stream, updated)
        except nats.js.errors.BadRequestError as exc:
            log.warning("consumer_update_refused", durable=durable, error=str(exc))
        else:
            changed = sorted(k for k in wanted if wanted[k] != have[k])
            log.info("consumer_updated", durable=durable, changed=changed)

    async def once(self, name: str, *, ttl: float, replicas: int = 1) -> JetStreamOnce:
        """A claim-once store (``eventstore.once``) named ``<stream>_<name>`` on this server."""
        return await JetStreamOnce.open(
            self._js, f"{self._stream}_{name}", ttl=ttl, replicas=replicas
        )

    async def keys(self, name: str = "KEYS", *, replicas: int = 1) -> JetStreamKeyStore:
        """A key store (``eventstore.keystore``) named ``<stream>_<name>`` on this server."""
        return await JetStreamKeyStore.open(self._js, f"{self._stream}_{name}", replicas=replicas)

    async def close(self) -> None:
        """Close the connection if this log opened it."""
        if self._owns_connection and not self._nc.is_closed:
            await self._nc.close()

    async def _next_by_subject(self, wire: str, start: int) -> RecordedEvent | None:
        try:
            raw = await self._js.get_msg(
                self._stream, seq=start, subject=wire, next=True, direct=True
            )
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return self._from_raw(raw)

    async def _consume(
        self, wire: str, start: int, end: int, start_time: datetime | None = None
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Stream ``start..end`` through an ephemeral pull consumer, fetched in large batches,
        two requests in flight. With ``start_time`` the consumer starts at the first message
        stored at or after it, and messages before ``start`` are skipped."""
        config = api.ConsumerConfig(
            filter_subject=wire,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,
        )
        if start_time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_seq = None
            config.opt_start_time = start_time
        inbox = self._nc.new_inbox()
        arrived: deque[Msg] = deque()
        wake = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            arrived.append(msg)
            wake.set()

        try:
            info = await self._js.add_consumer(self._stream, config)
            sub = await self._nc.subscribe(inbox, cb=on_message)
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        consumer = info.name
        next_subject = f"{self._js._prefix}.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        request = json.dumps({"batch": _BATCH, "expires": int(_PULL_EXPIRES * 1e9)}).encode()
        try:
            if info.num_pending == 0:
                return
            in_flight = 0  # messages asked for and not yet received
            statuses = 0  # pull requests that ended in a row without delivering anything
            while True:
                while in_flight < 2 * _BATCH:
                    await self._nc.publish(next_subject, request, reply=inbox)
                    in_flight += _BATCH
                if not arrived:
                    wake.clear()
                    try:
                        async with asyncio.timeout(_PULL_EXPIRES + self._timeout):
                            await wake.wait()
                    except TimeoutError:
                        if not self._nc.is_connected:
                            raise EventLogUnavailable("lost NATS while reading") from None
                        in_flight = 0
                    continue
                msg = arrived.popleft()
                if not msg.reply:  # a status: a pull request expired or was turned down
                    status = (msg.headers or {}).get("Status", "")
                    statuses += 1
                    if status == "503":
                        raise EventLogUnavailable("the stream stopped answering a read")
                    if status not in ("404", "408", "409") or statuses > _MAX_STATUSES:
                        raise EventStoreError(f"read interrupted: {status} {msg.headers}")
                    in_flight = 0
                    continue
                statuses = 0
                in_flight -= 1
                _, seq, stamp_ns, pending = _ack_metadata(msg.reply)
                if seq > end:
                    return
                if seq >= start:
                    yield self._from_msg(msg, seq, stamp_ns)
                if seq >= end or pending == 0:
                    return
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        finally:
            await _quietly(sub.unsubscribe())
            await _quietly(self._js.delete_consumer(self._stream, consumer))

    def _delivery(self, msg: Msg) -> _JetStreamDelivery:
        num_delivered, seq, stamp_ns, pending = _ack_metadata(msg.reply)
        return _JetStreamDelivery(msg, self._from_msg(msg, seq, stamp_ns), num_delivered, pending)

    def _from_msg(self, msg: Msg, seq: int, stamp_ns: int) -> RecordedEvent:
        headers = msg.headers or {}
        return RecordedEvent(
            position=seq,
            subject=_decode(self._prefix, msg.subject),
            data=msg.data,
            recorded_at=_EPOCH + timedelta(microseconds=stamp_ns // 1000),
            idempotency_key=headers.get(_MSG_ID),
            headers=_user_headers(headers),
        )

    def _from_raw(self, raw: api.RawStreamMsg) -> RecordedEvent:
        headers = raw.headers or {}
        if raw.seq is None or raw.subject is None:
            raise EventStoreError("a direct get answered without sequence or subject")
        return RecordedEvent(
            position=raw.seq,
            subject=_decode(self._prefix, raw.subject),
            data=raw.data or b"",
            recorded_at=raw.time or datetime.now(UTC),
            idempotency_key=headers.get(_MSG_ID),
            headers=_user_headers(headers),
        )


class _JetStreamSubscription:
    """A bound durable pull consumer; several of them on one durable share its events."""

    def __init__(
        self, event_log: JetStreamEventLog, psub: JetStreamContext.PullSubscription, durable: str
    ) -> None:
        self._log = event_log
        self._psub = psub
        self._durable = durable

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:  # noqa: ASYNC109
        try:
            msgs = await self._psub.fetch(batch=max_messages, timeout=max(timeout, 0.01))
        except (nats.errors.TimeoutError, TimeoutError):
            # nats-py raises its own TimeoutError or, when its deadline runs out, asyncio's
            return []
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return [self._log._delivery(msg) for msg in msgs]

    async def pending(self) -> int:
        try:
            info = await self._psub.consumer_info()
        except (nats.errors.Error, OSError) as exc:
            raise _translate(exc) from exc
        return int(info.num_pending or 0)

    async def close(self) -> None:
        await _quietly(self._psub.unsubscribe())


class _JetStreamDelivery(SettledOnce):
    """One message of a durable consumer; settling it twice is a no-op."""

    def __init__(self, msg: Msg, event: RecordedEvent, num_delivered: int, pending: int) -> None:
        super().__init__(event, num_delivered, pending)
        self._msg = msg

    async def _ack(self) -> None:
        await _sent(self._msg.ack())

    async def _nak(self, delay: float | None) -> None:
        await _sent(self._msg.nak(delay=delay))

    async def _extend(self) -> None:
        await _sent(self._msg.in_progress())


async def _sent(action: Awaitable[None]) -> None:
    """Await an ack-family publish, translating the driver's errors."""
    try:
        await action
    except nats.errors.MsgAlreadyAckdError:
        return
    except (nats.errors.Error, OSError) as exc:
        raise _translate(exc) from exc


def _translate(exc: BaseException) -> EventStoreError:
    """The :mod:`eventstore.errors` counterpart of a driver error."""
    if isinstance(exc, nats.errors.BadSubjectError):
        return InvalidSubject(str(exc))
    if isinstance(exc, nats.js.errors.APIError) and exc.code != 503:
        return EventStoreError(str(exc))
    if isinstance(exc, nats.errors.MaxPayloadError | nats.errors.BadHeaderError):
        return EventStoreError(str(exc) or type(exc).__name__)
    return EventLogUnavailable(str(exc) or type(exc).__name__)


def _differs(current: object, wanted: object) -> bool:
    """Whether a stream setting must change (the server says None or 0 for what is unset)."""
    if wanted in (0.0, -1) and current in (None, 0, 0.0, -1):
        return False
    return current != wanted


def _user_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k[:5].lower() != "nats-"}


def _ack_metadata(reply: str) -> tuple[int, int, int, int]:
    """``(num_delivered, stream sequence, timestamp ns, num_pending)`` from an ack subject,
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or its longer form
    with domain and account hash after ``$JS.ACK``."""
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    return (
        int(tokens[base + 2]),
        int(tokens[base + 3]),
        int(tokens[base + 5]),
        int(tokens[base + 6]),
    )


@lru_cache(maxsize=16384)
def _decode(prefix: str, wire: str) -> Subject:
    return decode_subject(prefix, wire)


async def _quietly(action: Awaitable[object]) -> None:
    """Best-effort cleanup: the server reaps what this fails to remove."""
    try:
        await action
    except (nats.errors.Error, OSError, ValueError):
        return
