"""A bare ``GET /metrics`` endpoint for processes that serve no HTTP API (dispatcher, projector).

The API serves ``/metrics`` itself; a separately run dispatcher or projector exposes its own
registry here when ``RELAYPUSH_METRICS_PORT`` is set, so every part of a deployment can be
scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from relaypush.metrics import Registry

__all__ = ["serve_metrics"]

log = structlog.get_logger(__name__)

_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _response(status: bytes, body: bytes, content_type: bytes = b"text/plain") -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
    head += b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    return head + body


@contextlib.asynccontextmanager
async def serve_metrics(registry: Registry, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``registry`` at ``http://host:port/metrics`` while the context is open; yields the
    bound port (useful with port 0)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b""):
                pass
            parts = request_line.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] == b"/metrics":
                reply = _response(b"200 OK", registry.render().encode(), _CONTENT_TYPE)
            else:
                reply = _response(b"404 Not Found", b"only GET /metrics is served here\n")
            writer.write(reply)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = int(server.sockets[0].getsockname()[1])
    log.info("metrics_serving", host=host, port=bound)
    try:
        yield bound
    finally:
        server.close()
        await server.wait_closed()
