"""A bare ``GET /metrics`` endpoint for processes that serve no HTTP API (dispatcher, projector).

The API serves ``/metrics`` itself; a separately run dispatcher or projector exposes its own
registry here when ``RELAYPUSH_METRICS_PORT`` is set, so every part of a deployment can be
scraped.

Each connection is served on its own and gets :data:`CLIENT_TIMEOUT` seconds for the whole
exchange, its request head (at most :data:`MAX_REQUEST_HEAD` bytes) in and the reply out: a
client that connects and sends nothing, trickles its headers, or does not read the reply is cut
off then, and never holds up another scrape or the process's shutdown, which drops every open
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from typing import Final, Protocol

import structlog

from relaypush.metrics import CONTENT_TYPE

__all__ = ["CLIENT_TIMEOUT", "MAX_REQUEST_HEAD", "serve_metrics"]

log = structlog.get_logger(__name__)

CLIENT_TIMEOUT: Final = 5.0
"""Seconds one connection may take, from accepting it to the last byte of the reply."""
MAX_REQUEST_HEAD: Final = 8192
"""Bytes of request line and headers read at most; a longer head is cut off."""


class Renders(Protocol):
    """What is served: a ``relaypush.metrics.Registry``."""

    def render(self) -> str: ...


def _cut_off(writer: asyncio.StreamWriter) -> None:
    """Close at once with a reset: what the kernel still holds for the client is dropped too."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _response(status: bytes, body: bytes, content_type: bytes = b"text/plain") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
    head += b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    return head + body


@contextlib.asynccontextmanager
async def serve_metrics(
    registry: Renders, host: str, port: int, *, client_timeout: float = CLIENT_TIMEOUT
) -> AsyncIterator[int]:
    """Serve ``registry`` at ``http://host:port/metrics`` while the context is open; yields the
    bound port (useful with port 0)."""
    open_connections: set[asyncio.StreamWriter] = set()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
            reply = _response(b"200 OK", registry.render().encode(), CONTENT_TYPE.encode())
        else:
            reply = _response(b"404 Not Found", b"only GET /metrics is served here\n")
        writer.write(reply)
        await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_connections.add(writer)
        finished = False
        try:
            async with asyncio.timeout(client_timeout):
                await exchange(reader, writer)
            finished = True
        except TimeoutError:
            log.info("metrics_client_cut_off", reason="too slow", timeout=client_timeout)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            open_connections.discard(writer)
            if finished:
                writer.close()
            else:
                _cut_off(writer)  # close() would wait for a reader that does not read

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)
    bound = int(server.sockets[0].getsockname()[1])
    log.info("metrics_serving", host=host, port=bound)
    try:
        yield bound
    finally:
        server.close()
        for writer in list(open_connections):
            _cut_off(writer)
        await server.wait_closed()
