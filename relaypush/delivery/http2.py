"""A lean HTTP/2 client for the providers: a few TLS connections, many streams on each.

APNs and FCM (in HTTP/2 mode) send through :class:`~relaypush.delivery.http2_pool.Http2Pool`,
which holds this module's :class:`Connection` objects. A provider sends one small POST and
reads one small answer, millions of times, and the client's CPU per send is what limits a
dispatcher, so this client does only that, with the framing of RFC 9113 written out here and
header compression in :mod:`relaypush.delivery.header_block` (no h2 state machine: on h2 the
same client cost three times the CPU per send; see docs/performance.md, "Provider clients"):

- **Requests**: HEADERS (CONTINUATION past the server's frame size) and DATA with END_STREAM,
  built in one go; the frames of every request made in one turn of the event loop leave in one
  ``transport.write``. A body larger than the flow-control windows waits for WINDOW_UPDATE.
- **Answers**: status, lower-case headers (decoded when read) and body, complete at END_STREAM;
  informational (1xx) headers and trailers are skipped. Our receive windows are 1 MiB per
  stream and 16 MiB for the connection, topped up as answers are read.
- **The server's SETTINGS** are applied and acknowledged; a send waits for the first ones, so
  ``MAX_CONCURRENT_STREAMS`` is known. PING is answered; PUSH_PROMISE is refused (push is off).
- **Streams before connections**: a send takes a free stream on an open connection; only when
  every connection is full is another opened, one at a time, up to ``max_connections``; past
  that, sends wait for a free stream.

Failures, each an :class:`Http2Error` (the caller answers Retry):

- a request not answered within ``timeout`` (connecting included) raises ``TimeoutError``; its
  stream is reset and its connection leaves the pool at once, closing when its last stream is
  done (a connection that stalls once is not trusted again);
- ``GOAWAY``: the connection takes no new streams; streams above the server's last stream id
  fail at once with :class:`ConnectionClosed` (they were not processed), the others may still
  be answered until the connection closes;
- ``RST_STREAM`` fails its stream (:class:`StreamReset`); a protocol or compression error
  (answered with GOAWAY) or a lost connection fails every stream on it
  (:class:`ConnectionClosed`);
- a connection that cannot be made (refused, TLS, ALPN other than h2) is :class:`ConnectFailed`.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

from relaypush.delivery import header_block
from relaypush.delivery.header_block import CompressionError, Fields

__all__ = [
    "ConnectFailed",
    "Connection",
    "ConnectionClosed",
    "Header",
    "Http2Error",
    "Origin",
    "Owner",
    "PoolClosed",
    "Response",
    "StreamReset",
]

Header = tuple[bytes, bytes]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE) and for the connection.
STREAM_WINDOW: Final = 1 << 20
CONNECTION_WINDOW: Final = 1 << 24
#: The largest frame we accept (the default SETTINGS_MAX_FRAME_SIZE; we do not raise it).
MAX_FRAME: Final = 16384
#: The largest header block we take from a server (HEADERS and its CONTINUATION frames).
MAX_HEADER_BLOCK: Final = 1 << 20
#: Streams per connection when the server sets no MAX_CONCURRENT_STREAMS (RFC 9113: no limit).
UNLIMITED_STREAMS: Final = 1000
#: Retire a connection before its stream ids run out (2**31 - 1 is the last odd one).
LAST_STREAM_ID: Final = (1 << 31) - 1024
_MAX_WINDOW: Final = (1 << 31) - 1

# frame types, flags, settings, error codes (RFC 9113, sections 6, 6.5.2, 7)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 1, 2, 3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 4, 5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0, 1, 3, 6
CANCEL, COMPRESSION_ERROR = 8, 9

_HEAD: Final = struct.Struct(">IBI")  # length << 8 | type, flags, stream id
_SETTING: Final = struct.Struct(">HI")
_WORD: Final = struct.Struct(">I")
_GOAWAY: Final = struct.Struct(">II")

_LOCAL_SETTINGS: Final = b"".join(
    _SETTING.pack(code, value)
    for code, value in (
        (HEADER_TABLE_SIZE, 0),
        (ENABLE_PUSH, 0),
        (INITIAL_WINDOW_SIZE, STREAM_WINDOW),
    )
)


class Http2Error(Exception):
    """A request got no whole answer; sending it again is safe."""


class ConnectFailed(Http2Error):
    """No connection could be made (refused, TLS, no HTTP/2)."""


class ConnectionClosed(Http2Error):
    """The connection ended (GOAWAY, reset, protocol error) before the answer was complete."""


class StreamReset(Http2Error):
    """The server reset the request's stream."""


class PoolClosed(Http2Error):
    """The pool was closed."""


class _ProtocolError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect: ``https://host[:port]``, the ``:authority`` to send and a path prefix."""

    host: str
    port: int
    authority: str
    path: str = ""

    @classmethod
    def parse(cls, url: str) -> Origin:
        """From an https URL; ``ValueError`` for anything else."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https://host[:port] URL: {url!r}")
        port = parts.port or 443
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        authority = host if port == 443 else f"{host}:{port}"
        return cls(parts.hostname, port, authority, parts.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Response:
    """A whole answer: its status, its headers (read with ``headers.get(b"name")``), its body."""

    status: int
    headers: Fields
    body: bytes


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


@dataclass(slots=True)
class _Exchange:
    """One request's stream: what is left to send, the answer so far, who waits for it."""

    future: asyncio.Future[Response]
    send_window: int
    fields: Fields | None = None
    body: bytearray = field(default_factory=bytearray)
    unacked: int = 0  # bytes received and not yet given back with WINDOW_UPDATE


class Owner(Protocol):
    """What a connection tells the pool that holds it."""

    def retire(self, connection: Connection, why: str) -> None:
        """``connection`` takes no new streams (and closes once idle)."""

    def room(self) -> None:
        """Streams may have come free (new SETTINGS)."""


class Connection(asyncio.Protocol):
    """One TLS connection speaking HTTP/2, answering each stream when it ends."""

    def __init__(self, pool: Owner) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._exchanges: dict[int, _Exchange] = {}
        self._next_stream = 1
        self._out: list[bytes] = []
        self._flush_soon = False
        self._buffer = bytearray()
        self._continued: tuple[int, int, bytearray] | None = None  # stream, flags, block so far
        self._announce = True  # start the next header block with "dynamic table size 0"
        # the server's settings and windows
        self._max_frame = 16384
        self._initial_window = 65535
        self._send_window = 65535
        self._window = asyncio.Event()
        self._received = 0  # connection-level bytes not yet given back
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.max_streams = 0  # no stream before the server's SETTINGS
        self.reserved = 0  # streams promised to sends (in flight or about to be)
        self.retired = False

    @property
    def has_room(self) -> bool:
        return not self.retired and self.reserved < self.max_streams

    @property
    def idle(self) -> bool:
        return not self._exchanges

    def alpn(self) -> str | None:
        transport = self._transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        return ssl_object.selected_alpn_protocol() if ssl_object is not None else None

    async def ready(self) -> None:
        """Wait for the server's SETTINGS, so the stream limit is known before the first send."""
        await asyncio.shield(self._ready)

    async def exchange(self, headers: Sequence[Header], body: bytes) -> Response:
        """Send one request on a new stream and wait for its whole answer."""
        if self._transport is None or self._transport.is_closing():
            self._pool.retire(self, "closed")
            raise ConnectionClosed("the connection is closed")
        stream_id = self._next_stream
        self._next_stream += 2
        if stream_id >= LAST_STREAM_ID:
            self._pool.retire(self, "stream ids used up")
        exchange = _Exchange(self._loop.create_future(), self._initial_window)
        self._exchanges[stream_id] = exchange
        try:
            self._send_headers(stream_id, header_block.encode(headers), end_stream=not body)
            if body:
                size = len(body)
                if size <= self._max_frame and size <= min(self._send_window, exchange.send_window):
                    self._send_window -= size
                    exchange.send_window -= size
                    self._out.append(_frame(DATA, END_STREAM, stream_id, body))
                else:
                    await self._send_slowly(stream_id, exchange, body)
            if not self._flush_soon:  # one write for all the requests made in this loop turn
                self._flush_soon = True
                self._loop.call_soon(self._flush)
            return await exchange.future
        finally:
            if self._exchanges.pop(stream_id, None) is not None:  # cancelled or failed
                self._out.append(_frame(RST_STREAM, 0, stream_id, _WORD.pack(CANCEL)))
                self._flush()

    def _send_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        if self._announce:
            self._announce = False
            block = b"\x20" + block  # dynamic table size update: 0
        flags = END_STREAM if end_stream else 0
        limit = self._max_frame
        if len(block) <= limit:
            self._out.append(_frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        chunks = [block[i : i + limit] for i in range(0, len(block), limit)]
        self._out.append(_frame(HEADERS, flags, stream_id, chunks[0]))
        for chunk in chunks[1:-1]:
            self._out.append(_frame(CONTINUATION, 0, stream_id, chunk))
        self._out.append(_frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))

    async def _send_slowly(self, stream_id: int, exchange: _Exchange, body: bytes) -> None:
        """Send ``body`` as the flow-control windows and the frame size allow."""
        view = memoryview(body)
        while view:
            room = min(self._send_window, exchange.send_window, self._max_frame)
            if room <= 0:
                self._window.clear()
                self._flush()
                await self._window.wait()
                if self._transport is None or self._transport.is_closing():
                    raise ConnectionClosed("closed while waiting for flow control")
                continue
            chunk, view = view[:room], view[room:]
            self._send_window -= len(chunk)
            exchange.send_window -= len(chunk)
            flags = 0 if view else END_STREAM
            self._out.append(_frame(DATA, flags, stream_id, bytes(chunk)))

    def close(self, code: int = NO_ERROR) -> None:
        """Say GOAWAY and close (the transport sends what is queued first)."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            last = max(0, self._next_stream - 2)
            self._out.append(_frame(GOAWAY, 0, 0, _GOAWAY.pack(last, code)))
            self._flush()
            transport.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no ``asyncio.Transport`` subclass, but has its methods
        self._transport = cast(asyncio.Transport, transport)
        increment = _WORD.pack(CONNECTION_WINDOW - 65535)
        self._out += [
            PREFACE,
            _frame(SETTINGS, 0, 0, _LOCAL_SETTINGS),
            _frame(WINDOW_UPDATE, 0, 0, increment),
        ]
        self._flush()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, end = 0, len(buffer)
        try:
            while end - pos >= 9:
                word, flags, stream_id = _HEAD.unpack_from(buffer, pos)
                length = word >> 8
                if length > MAX_FRAME:
                    raise _ProtocolError(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                payload = bytes(buffer[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._frame_received(word & 0xFF, flags, stream_id & 0x7FFFFFFF, payload)
        except _ProtocolError as exc:
            self._fail(f"HTTP/2 protocol error: {exc}", code=exc.code)
            return
        except CompressionError as exc:
            self._fail(f"HPACK error: {exc}", code=COMPRESSION_ERROR)
            return
        del buffer[:pos]
        if self._received >= CONNECTION_WINDOW // 2:
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, _WORD.pack(self._received)))
            self._received = 0
        self._flush()
        if self.retired and not self._exchanges:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc or 'closed'}")
        self._window.set()
        if not self.lost.done():
            self.lost.set_result(None)

    # -- frames

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continued is not None and kind != CONTINUATION:
            raise _ProtocolError(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == HEADERS:
            self._headers_received(flags, stream_id, payload)
        elif kind == DATA:
            self._data_received(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self._continued is None or self._continued[0] != stream_id:
                raise _ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._continued[2].extend(payload)
            if len(self._continued[2]) > MAX_HEADER_BLOCK:
                raise _ProtocolError(PROTOCOL_ERROR, "a header block past 1 MiB")
            if flags & END_HEADERS:
                stream, first_flags, block = self._continued
                self._continued = None
                self._answer_headers(stream, first_flags, bytes(block))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings_received(stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise _ProtocolError(FRAME_SIZE_ERROR, "a PING of the wrong size")
            if not flags & ACK:
                self._out.append(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            exchange = self._exchanges.pop(stream_id, None)
            if exchange is not None and not exchange.future.done():
                code = _WORD.unpack_from(payload)[0] if len(payload) == 4 else -1
                exchange.future.set_exception(StreamReset(f"stream reset by the server ({code})"))
        elif kind == GOAWAY:
            last, code = _GOAWAY.unpack_from(payload) if len(payload) >= 8 else (0, -1)
            self._goaway(code, last & 0x7FFFFFFF)
        elif kind == PUSH_PROMISE:
            raise _ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE, though push is off")
        # PRIORITY and unknown frame types are ignored

    def _headers_received(self, flags: int, stream_id: int, payload: bytes) -> None:
        start, end = 0, len(payload)
        if flags & PADDED:
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise _ProtocolError(PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = payload[start:end]
        if flags & END_HEADERS:
            self._answer_headers(stream_id, flags, block)
        else:
            self._continued = (stream_id, flags, bytearray(block))

    def _answer_headers(self, stream_id: int, flags: int, block: bytes) -> None:
        exchange = self._exchanges.get(stream_id)
        if exchange is None:
            header_block.decode(block)  # an answer nobody waits for still has to be valid
            return
        fields = header_block.decode(block)
        if exchange.fields is None and not 100 <= fields.status < 200:
            exchange.fields = fields  # the final answer's headers; 1xx and trailers are skipped
        if flags & END_STREAM:
            self._complete(stream_id, exchange)

    def _data_received(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._received += len(payload)
        data = payload
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ProtocolError(PROTOCOL_ERROR, "DATA padding exceeds the frame")
            data = payload[1 : len(payload) - payload[0]]
        exchange = self._exchanges.get(stream_id)
        if exchange is None:
            return
        exchange.body += data
        if flags & END_STREAM:
            self._complete(stream_id, exchange)
            return
        exchange.unacked += len(payload)
        if exchange.unacked >= STREAM_WINDOW // 2:
            self._out.append(_frame(WINDOW_UPDATE, 0, stream_id, _WORD.pack(exchange.unacked)))
            exchange.unacked = 0

    def _complete(self, stream_id: int, exchange: _Exchange) -> None:
        del self._exchanges[stream_id]
        if exchange.future.done():
            return
        if exchange.fields is None:
            exchange.future.set_exception(StreamReset("the stream ended without an answer"))
        else:
            response = Response(exchange.fields.status, exchange.fields, bytes(exchange.body))
            exchange.future.set_result(response)

    def _settings_received(self, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) % 6:
            raise _ProtocolError(FRAME_SIZE_ERROR, "a malformed SETTINGS frame")
        if not self._ready.done():
            self.max_streams = UNLIMITED_STREAMS  # unless these first SETTINGS set a limit
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif code == INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ProtocolError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta, self._initial_window = value - self._initial_window, value
                for exchange in self._exchanges.values():
                    exchange.send_window += delta
            elif code == MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise _ProtocolError(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self._max_frame = value
            elif code == HEADER_TABLE_SIZE:
                self._announce = True
        self._out.append(_frame(SETTINGS, ACK, 0))
        self._window.set()
        if not self._ready.done():
            self._ready.set_result(None)
        self._pool.room()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ProtocolError(FRAME_SIZE_ERROR, "a WINDOW_UPDATE of the wrong size")
        increment = _WORD.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise _ProtocolError(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ProtocolError(FLOW_CONTROL_ERROR, "the connection window overflowed")
        else:
            exchange = self._exchanges.get(stream_id)
            if exchange is not None:
                exchange.send_window += increment
        self._window.set()

    # -- inside

    def _flush(self) -> None:
        self._flush_soon = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(out))

    def _goaway(self, code: int, last_stream_id: int) -> None:
        """No new streams; the ones the server did not take fail now, the rest may finish."""
        why = f"GOAWAY from the server (error code {code})"
        self._pool.retire(self, why)
        for stream_id in [s for s in self._exchanges if s > last_stream_id]:
            exchange = self._exchanges.pop(stream_id)
            if not exchange.future.done():
                exchange.future.set_exception(ConnectionClosed(why))

    def _fail(self, why: str, *, code: int | None = None) -> None:
        """The connection is finished: every waiting stream fails with ``why``."""
        exchanges, self._exchanges = self._exchanges, {}
        if code is not None:
            self.close(code)
        elif self._transport is not None:
            self._transport.close()
        self._pool.retire(self, why)
        for exchange in exchanges.values():
            if not exchange.future.done():
                exchange.future.set_exception(ConnectionClosed(why))
        if not self._ready.done():
            self._ready.set_exception(ConnectionClosed(why))
            self._ready.exception()  # retrieved: nobody may be waiting any more
