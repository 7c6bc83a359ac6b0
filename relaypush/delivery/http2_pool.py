"""The pool of HTTP/2 connections a provider sends through (see :mod:`relaypush.delivery.http2`).

Streams before connections: a send takes a free stream on an open connection (up to the
server's ``MAX_CONCURRENT_STREAMS``); only when every connection is full is another opened,
one at a time, up to ``max_connections``; past that, sends wait for a free stream. A request
that times out retires its connection: it takes no new streams and closes once idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from relaypush.delivery.http2 import (
    ConnectFailed,
    Connection,
    ConnectionClosed,
    Header,
    Origin,
    PoolClosed,
    Response,
)

__all__ = ["Http2Pool"]

log = structlog.get_logger(__name__)


class Http2Pool:
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
        self._connections: list[Connection] = []
        self._retiring: set[Connection] = set()
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
        connection: Connection | None = None
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
        except OSError as exc:
            if connection is not None:
                self.retire(connection, f"{type(exc).__name__}: {exc}")
            raise ConnectionClosed(f"{type(exc).__name__}: {exc}") from exc

    def retire(self, connection: Connection, why: str) -> None:
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

    async def _acquire(self) -> Connection:
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

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            _, protocol = await loop.create_connection(
                lambda: Connection(self),
                origin.host,
                origin.port,
                ssl=self._context,
                server_hostname=origin.host,
            )
        except (OSError, ssl.SSLError) as exc:
            log.warning("http2_connect_failed", origin=origin.authority, error=str(exc))
            raise ConnectFailed(f"cannot connect to {origin.authority}: {exc}") from exc
        connection = protocol
        try:
            alpn = connection.alpn()
            if alpn not in (None, "h2"):
                raise ConnectFailed(f"{origin.authority} does not speak HTTP/2 (ALPN {alpn!r})")
            await connection.ready()
        except BaseException:
            connection.retired = True
            with contextlib.suppress(Exception):
                connection.close()
            raise
        if self._on_opened is not None:
            self._on_opened()
        return connection
