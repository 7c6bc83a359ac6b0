"""Candidate (b) of the provider-clients benchmark: an HTTP/2 pool built on the h2 library.

This was relaypush's first lean client (before ``relaypush/delivery/http2.py`` wrote the
framing out itself): the same pool (streams before connections, one write per loop turn,
GOAWAY and timeouts handled) on h2's ``H2Connection``, with h2's header validation off, our own
literal-only header encoder in place of hpack's, and h2's per-stream count of open streams
replaced. It passes the same provider tests; ``bench/provider_clients.py`` puts it under
``ApnsProvider`` and ``FcmProvider`` (:func:`use_h2_library`) to measure what h2's state
machine costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog
from hpack.table import HeaderTable

from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.http2 import (
    ConnectFailed,
    ConnectionClosed,
    Origin,
    PoolClosed,
    StreamReset,
)

__all__ = ["H2LibraryPool", "use_h2_library"]

log = structlog.get_logger(__name__)

Header = tuple[bytes, bytes]

#: Our receive window per stream and for the connection: answers never wait for WINDOW_UPDATE.
RECEIVE_WINDOW: Final = 1 << 20
#: Let h2 drop closed streams once it holds this many (see :class:`_H2Connection`).
_MAX_HELD: Final = 1024
#: Retire a connection before its stream ids run out (2**31 - 1 is the last odd one).
LAST_STREAM_ID: Final = (1 << 31) - 1024


@dataclass(slots=True)
class Response:
    """A whole answer: status, headers (lower-case names, the last of repeated ones), body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


# -- header encoding (RFC 7541) ----------------------------------------------------------------

_STATIC_NAMES: Final = {
    name: i for i, (name, _) in reversed(list(enumerate(HeaderTable.STATIC_TABLE, 1)))
}
_STATIC_PAIRS: Final = {pair: i for i, pair in enumerate(HeaderTable.STATIC_TABLE, 1) if pair[1]}
_NEVER_INDEXED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
_TABLE_SIZE_ZERO: Final = b"\x20"
_CACHE_LIMIT: Final = 256


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer in a first byte of ``prefix_bits`` bits under the high bits ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(name: bytes, value: bytes) -> bytes:
    index = _STATIC_PAIRS.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)  # indexed: the whole field is in the static table
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        head = _integer(name_index, 4, first)
    else:
        head = bytes((first,)) + _integer(len(name), 7, 0) + name
    return head + _integer(len(value), 7, 0) + value


_field_cache: dict[Header, bytes] = {}


def encode_headers(headers: Sequence[Header]) -> bytes:
    """An HPACK header block that uses no dynamic table: literals, no Huffman coding."""
    cache = _field_cache
    parts = []
    for header in headers:
        encoded = cache.get(header)
        if encoded is None:
            encoded = _field(*header)
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[header] = encoded
        parts.append(encoded)
    return b"".join(parts)


class _Encoder:
    """Stands in for ``hpack.Encoder`` in an ``H2Connection`` (h2 calls ``encode(headers)`` and
    sets ``header_table_size`` when the peer's ``SETTINGS_HEADER_TABLE_SIZE`` changes)."""

    def __init__(self) -> None:
        self._announce = True  # say "dynamic table size 0" in the next header block

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._announce = True

    def encode(self, headers: Sequence[Header], huffman: bool = False) -> bytes:
        block = encode_headers(headers)
        if self._announce:
            self._announce = False
            return _TABLE_SIZE_ZERO + block
        return block


# -- one connection ----------------------------------------------------------------------------

_CONFIG: Final = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)
_LOCAL_SETTINGS: Final = {
    h2.settings.SettingCodes.ENABLE_PUSH: 0,
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
}


class _H2Connection(h2.connection.H2Connection):
    """h2's connection, counting open streams without a scan per new stream.

    h2 checks ``open_outbound_streams + 1 <= MAX_CONCURRENT_STREAMS`` before each new stream,
    and its count walks every stream it still holds (dropping the closed ones as it goes). The
    number of streams held is an upper bound of the open ones, which is all the check needs
    while it is below the limit; only at the limit do we let h2 count (and drop) for real.
    """

    @property
    def open_outbound_streams(self) -> int:
        held = len(self.streams)
        if held < min(self.remote_settings.max_concurrent_streams, _MAX_HELD):
            return held
        return self._open_streams(int(self.config.client_side))


@dataclass(slots=True)
class _Exchange:
    """One request's stream: the answer so far, and the future that gets it when complete."""

    future: asyncio.Future[Response]
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    """One TLS connection speaking HTTP/2 through h2, answering each stream when it ends."""

    def __init__(self, pool: H2LibraryPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._h2 = _H2Connection(config=_CONFIG)
        self._h2.encoder = _Encoder()  # type: ignore[assignment]
        self._h2.local_settings = h2.settings.Settings(client=True, initial_values=_LOCAL_SETTINGS)
        self._transport: asyncio.Transport | None = None
        self._exchanges: dict[int, _Exchange] = {}
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._window = asyncio.Event()
        self._flush_soon = False
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.max_streams = 1  # until the server's SETTINGS say otherwise
        self.reserved = 0  # streams promised to sends (in flight or about to be)
        self.retired = False

    @property
    def has_room(self) -> bool:
        return not self.retired and self.reserved < self.max_streams

    async def ready(self) -> None:
        """Wait for the server's SETTINGS, so the stream limit is known before the first send."""
        await asyncio.shield(self._ready)

    async def exchange(self, headers: Sequence[Header], body: bytes) -> Response:
        """Send one request on a new stream and wait for its whole answer."""
        conn = self._h2
        stream_id = conn.get_next_available_stream_id()
        if stream_id >= LAST_STREAM_ID:
            self._pool.retire(self, "stream ids used up")
        exchange = _Exchange(self._loop.create_future())
        self._exchanges[stream_id] = exchange
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                window = min(
                    conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                )
                if len(body) <= window:
                    conn.send_data(stream_id, body, end_stream=True)
                else:
                    await self._send_slowly(stream_id, body)
            if not self._flush_soon:  # one write for all the requests made in this loop turn
                self._flush_soon = True
                self._loop.call_soon(self._flush)
            return await exchange.future
        finally:
            if self._exchanges.pop(stream_id, None) is not None:  # cancelled or failed
                with contextlib.suppress(h2.exceptions.H2Error):
                    conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    self._flush()

    async def _send_slowly(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` as the flow-control windows allow."""
        conn = self._h2
        view = memoryview(body)
        while view:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                self._window.clear()
                self._flush()
                await self._window.wait()
                if self._transport is None or self._transport.is_closing():
                    raise ConnectionClosed("closed while waiting for flow control")
                continue
            chunk, view = view[:window], view[window:]
            conn.send_data(stream_id, bytes(chunk), end_stream=not view)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(h2.exceptions.H2Error):
                self._h2.close_connection()
                self._flush()
            self._transport.close()

    @property
    def idle(self) -> bool:
        return not self._exchanges

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no ``asyncio.Transport`` subclass, but has its methods
        self._transport = cast(asyncio.Transport, transport)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(RECEIVE_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(f"HTTP/2 protocol error: {exc}")
            return
        exchanges = self._exchanges
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.headers = dict(event.headers)
                    exchange.status = int(exchange.headers.get(b":status", b"0"))
            elif isinstance(event, h2.events.StreamEnded):
                exchange = exchanges.pop(event.stream_id, None)
                if exchange is not None and not exchange.future.done():
                    answer = Response(exchange.status, exchange.headers, bytes(exchange.body))
                    exchange.future.set_result(answer)
            elif isinstance(event, h2.events.DataReceived):
                exchange = exchanges.get(event.stream_id)
                if exchange is not None:
                    exchange.body += event.data
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                exchange = exchanges.pop(event.stream_id, None)
                if exchange is not None and not exchange.future.done():
                    error = StreamReset(f"stream reset by the server ({event.error_code!r})")
                    exchange.future.set_exception(error)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.max_streams = self._h2.remote_settings.max_concurrent_streams
                self._window.set()
                if not self._ready.done():
                    self._ready.set_result(None)
                self._pool.room()
            elif isinstance(event, h2.events.WindowUpdated):
                self._window.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._goaway(event.error_code, event.last_stream_id)
        self._flush()
        if self.retired and not self._exchanges:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc or 'closed'}")
        self._window.set()
        if not self.lost.done():
            self.lost.set_result(None)

    # -- inside

    def _flush(self) -> None:
        self._flush_soon = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            data = self._h2.data_to_send()
            if data:
                transport.write(data)

    def _goaway(self, error_code: object, last_stream_id: int | None) -> None:
        """No new streams; the ones the server did not take fail now, the rest may finish."""
        why = f"GOAWAY from the server ({error_code!r})"
        self._pool.retire(self, why)
        last = last_stream_id if last_stream_id is not None else 0
        for stream_id in [s for s in self._exchanges if s > last]:
            exchange = self._exchanges.pop(stream_id)
            if not exchange.future.done():
                exchange.future.set_exception(ConnectionClosed(why))

    def _fail(self, why: str) -> None:
        """The connection is finished: every waiting stream fails with ``why``."""
        self._pool.retire(self, why)
        exchanges, self._exchanges = self._exchanges, {}
        for exchange in exchanges.values():
            if not exchange.future.done():
                exchange.future.set_exception(ConnectionClosed(why))
        if not self._ready.done():
            self._ready.set_exception(ConnectionClosed(why))
            self._ready.exception()  # retrieved: nobody may be waiting any more
        if self._transport is not None:
            self._transport.close()


# -- the pool ----------------------------------------------------------------------------------


class H2LibraryPool:
    """HTTP/2 connections to one origin, shared by every request to it.

    ``opened`` and ``retired(why)`` are called when a connection is made and when one leaves
    the pool (for metrics and logs). ``timeout`` bounds each request, connecting included.
    """

    def __init__(
        self,
        origin: Origin,
        context: ssl.SSLContext,
        *,
        timeout: float,
        max_connections: int = 4,
        opened: Callable[[], None] | None = None,
        retired: Callable[[str], None] | None = None,
    ) -> None:
        self.origin = origin
        self.timeout = timeout
        self.max_connections = max_connections
        self._context = context
        self._on_opened = opened
        self._on_retired = retired
        self._connections: list[_Connection] = []
        self._retiring: set[_Connection] = set()
        self._connecting = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def connections(self) -> int:
        """Connections open in the pool (not counting retired ones still finishing)."""
        return len(self._connections)

    async def request(self, headers: Sequence[Header], body: bytes) -> Response:
        """Send one request (pseudo-headers first, lower-case names) and return its answer.

        Raises ``TimeoutError`` past ``timeout``, :class:`Http2Error` when no whole answer came.
        """
        if self._closed:
            raise PoolClosed("the HTTP/2 pool is closed")
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._acquire()
                try:
                    return await connection.exchange(headers, body)
                finally:
                    connection.reserved -= 1
                    if connection.retired:
                        if connection.idle:
                            connection.close()
                    else:
                        self._wake_one()
        except TimeoutError:
            if connection is not None:
                self.retire(connection, "timeout")
            raise
        except h2.exceptions.H2Error as exc:
            assert connection is not None
            self.retire(connection, f"h2: {exc!r}")
            raise ConnectionClosed(f"HTTP/2 error: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            if connection is not None:
                self.retire(connection, f"{type(exc).__name__}: {exc}")
            raise ConnectionClosed(f"{type(exc).__name__}: {exc}") from exc

    def retire(self, connection: _Connection, why: str) -> None:
        """Take ``connection`` out of use; it closes once no stream is waiting on it."""
        if not connection.retired:
            connection.retired = True
            if connection in self._connections:
                self._connections.remove(connection)
                self._retiring.add(connection)
                connection.lost.add_done_callback(lambda _: self._retiring.discard(connection))
                if self._on_retired is not None:
                    self._on_retired(why)
            self.room()
        if connection.idle:
            connection.close()

    def room(self) -> None:
        """Connections changed (opened, retired, new limits): every waiting send looks again."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_one(self) -> None:
        """One stream came free: the first send still waiting takes it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection; later requests raise :class:`PoolClosed`."""
        self._closed = True
        connections = [*self._connections, *self._retiring]
        self._connections, self._retiring = [], set()
        for connection in connections:
            connection.retired = True
            connection.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=self.timeout)
        self.room()

    async def _acquire(self) -> _Connection:
        """A connection with a stream reserved for the caller: an open one with room, else a
        new one (one opening at a time, up to ``max_connections``), else wait for room."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise PoolClosed("the HTTP/2 pool is closed")
            for connection in self._connections:
                if connection.has_room:
                    connection.reserved += 1
                    return connection
            if not self._connecting and len(self._connections) < self.max_connections:
                self._connecting = True
                try:
                    connection = await self._open()
                finally:
                    self._connecting = False
                    self.room()
                self._connections.append(connection)
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the free stream on
                raise

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, protocol = await loop.create_connection(
                lambda: _Connection(self),
                origin.host,
                origin.port,
                ssl=self._context,
                server_hostname=origin.host,
            )
        except (OSError, ssl.SSLError) as exc:
            log.warning("http2_connect_failed", origin=origin.authority, error=str(exc))
            raise ConnectFailed(f"cannot connect to {origin.authority}: {exc}") from exc
        assert isinstance(protocol, _Connection)
        connection = protocol
        try:
            alpn = _alpn(connection)
            if alpn not in (None, "h2"):
                raise ConnectFailed(f"{origin.authority} does not speak HTTP/2 (ALPN {alpn!r})")
            await connection.ready()
        except BaseException:
            connection.retired = True
            connection.close()
            raise
        if self._on_opened is not None:
            self._on_opened()
        return connection


def _alpn(connection: _Connection) -> str | None:
    transport = connection._transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.selected_alpn_protocol() if ssl_object is not None else None


def use_h2_library(provider: ApnsProvider | FcmProvider, ca_file: str) -> None:
    """Make ``provider`` send through an :class:`H2LibraryPool` instead of its own client."""
    pool = provider._pool
    assert pool is not None, "the provider does not send over HTTP/2"
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    provider._pool = H2LibraryPool(  # type: ignore[assignment]
        pool.origin, context, timeout=pool.timeout, max_connections=pool.max_connections
    )
