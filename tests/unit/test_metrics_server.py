"""The stand-alone metrics endpoint serves the registry's exposition text, and no client, silent,
trickling or not reading, holds it up."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx

from relaypush.metrics import Registry
from relaypush.metrics_server import serve_metrics


class BigBody:
    """A registry whose exposition is far larger than the socket buffers between two peers."""

    text = "# a comment line of exposition text, repeated\n" * 200_000  # about 9 MB

    def render(self) -> str:
        return self.text


async def test_metrics_are_served_and_other_paths_are_404() -> None:
    registry = Registry()
    registry.counter("relaypush_test_total", "a test counter").inc(3)
    async with serve_metrics(registry, "127.0.0.1", 0) as port, httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "relaypush_test_total 3" in r.text
        assert (await http.get(f"http://127.0.0.1:{port}/other")).status_code == 404


async def test_a_client_that_trickles_its_headers_is_cut_off() -> None:
    async with serve_metrics(Registry(), "127.0.0.1", 0, client_timeout=0.5) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ended = asyncio.create_task(reader.read())
        writer.write(b"GET /metrics HTTP/1.1\r\n")
        for _ in range(100):  # a header line every 100 ms, for ten seconds at most
            if ended.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(b"X-Slow: yes\r\n")
                await writer.drain()
            await asyncio.sleep(0.1)
        assert ended.done(), "the server kept a trickling client for ten seconds"
        writer.close()


async def test_a_silent_or_slow_reading_client_holds_up_no_other_scrape() -> None:
    async with (
        serve_metrics(BigBody(), "127.0.0.1", 0, client_timeout=1.0) as port,
        httpx.AsyncClient() as http,
    ):
        silent = await asyncio.open_connection("127.0.0.1", port)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        stalled_reader, stalled_writer = await asyncio.open_connection(sock=sock)
        stalled_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await stalled_writer.drain()

        for _ in range(3):  # meanwhile, scrapes are answered in full
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
            assert r.status_code == 200
            assert len(r.content) == len(BigBody.text)

        await asyncio.sleep(2.0)  # the stalled client reads nothing for twice its time
        received = b""
        async with asyncio.timeout(30):  # a server still writing would take minutes
            with contextlib.suppress(ConnectionError):
                while chunk := await stalled_reader.read(1 << 20):
                    received += chunk
        assert len(received) < len(BigBody.text), "the server waited for a reader that stalled"
        with contextlib.suppress(ConnectionError):  # cut off too, with nothing sent
            assert await silent[0].read() == b""
        for w in (silent[1], stalled_writer):
            w.close()


async def test_stopping_drops_every_open_connection() -> None:
    async with serve_metrics(Registry(), "127.0.0.1", 0, client_timeout=3600) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metr")  # half a request, and the client waits
        await writer.drain()
    async with asyncio.timeout(60):  # far less than the hour it would otherwise be given
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
    writer.close()
