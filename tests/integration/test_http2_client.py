"""relaypush's HTTP/2 client (``Http2Pool``) against a scripted h2 server over real TLS.

The provider tests cover the everyday path through the stand-ins; these cover what a server
may do that the stand-ins do not: a graceful GOAWAY, PING, CONTINUATION, padding, flow control
both ways, one stream per connection, a reset stream.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from relaypush.delivery.http2 import ConnectionClosed, Origin, StreamReset
from relaypush.delivery.http2_pool import Http2Pool
from relaypush.testing.tls import issue_server_certificate

Answer = Callable[["Server", int, dict[bytes, bytes], bytes], Coroutine[Any, Any, None]]


async def ok(server: Server, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
    """200 with the request body echoed."""
    server.respond(stream_id, 200, body)


class Server(asyncio.Protocol):
    """One connection of the scripted server: collects requests, answers with ``answer``."""

    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, bytearray] = {}
        self.headers: dict[int, dict[bytes, bytes]] = {}
        self.window = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.connections.append(self)
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values=self.owner.settings
        )
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.owner.events.append(event)
            if isinstance(event, h2.events.RequestReceived):
                self.headers[event.stream_id] = dict(event.headers)
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                stream_id = event.stream_id
                headers, body = self.headers[stream_id], bytes(self.bodies[stream_id])
                self.owner.requests.append((stream_id, headers, body))
                self.owner.arrived.set()
                task = asyncio.get_running_loop().create_task(
                    self.owner.answer(self, stream_id, headers, body)
                )
                self.owner.tasks.add(task)
                task.add_done_callback(self.owner.tasks.discard)
            elif isinstance(event, h2.events.WindowUpdated):
                self.window.set()
        self.flush()

    def respond(
        self,
        stream_id: int,
        status: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        pad: int | None = None,
    ) -> None:
        fields = [(b":status", str(status).encode()), *(headers or [])]
        self.conn.send_headers(stream_id, fields, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True, pad_length=pad)
        self.flush()

    async def respond_slowly(self, stream_id: int, body: bytes) -> None:
        """A body larger than the client's windows: sent as they open."""
        self.conn.send_headers(stream_id, [(b":status", b"200")])
        while body:
            room = min(self.conn.local_flow_control_window(stream_id), 16384)
            if room <= 0:
                self.window.clear()
                self.flush()
                await self.window.wait()
                continue
            chunk, body = body[:room], body[room:]
            self.conn.send_data(stream_id, chunk, end_stream=not body)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class ScriptedServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.answer: Answer = ok
        self.settings: dict[h2.settings.SettingCodes, int] = {}
        self.connections: list[Server] = []
        self.requests: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.events: list[h2.events.Event] = []
        self.arrived = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.ca_file = directory / "ca.pem"

    async def start(self) -> None:
        files = issue_server_certificate(self.directory, "127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(files.cert_file, files.key_file)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Server(self), "127.0.0.1", 0, ssl=context)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def received(self, count: int) -> None:
        while len(self.requests) < count:
            self.arrived.clear()
            await self.arrived.wait()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        assert self.server is not None
        self.server.close()
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abort()
        await self.server.wait_closed()


@pytest.fixture(name="server")
async def fx_server(tmp_path: Path) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


def make_pool(
    server: ScriptedServer, *, max_connections: int = 4, timeout: float = 5.0
) -> Http2Pool:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    context.set_alpn_protocols(["h2"])
    return Http2Pool(
        Origin.parse(server.url), context, timeout=timeout, max_connections=max_connections
    )


def request(path: str = "/x") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/json"),
    ]


async def test_a_graceful_goaway_lets_the_streams_the_server_took_finish(
    server: ScriptedServer,
) -> None:
    release = asyncio.Event()

    async def hold(s: Server, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        await release.wait()
        s.respond(stream_id, 200, body)

    server.answer = hold
    pool = make_pool(server)
    try:
        first = asyncio.create_task(pool.request(request(), b"one"))
        second = asyncio.create_task(pool.request(request(), b"two"))
        await server.received(2)
        # GOAWAY saying stream 3 was not taken, written raw: h2 answers nothing after its own
        [connection] = server.connections
        transport = connection.transport
        assert transport is not None
        transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + (1).to_bytes(4, "big") + bytes(4))
        with pytest.raises(ConnectionClosed, match="GOAWAY"):
            await second
        release.set()
        answer = await first
        assert (answer.status, answer.body) == (200, b"one")
        server.answer = ok
        again = await pool.request(request(), b"three")
        assert again.body == b"three"
    finally:
        await pool.close()
    assert len(server.connections) == 2


async def test_ping_is_answered_and_big_headers_come_in_continuations(
    server: ScriptedServer,
) -> None:
    big = b"v" * 40_000  # three frames of at most 16,384 bytes

    async def answer(s: Server, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        s.conn.ping(b"12345678")
        s.respond(stream_id, 200, b"{}", headers=[(b"x-big", big)], pad=7)

    server.answer = answer
    server.settings = {h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 100_000}
    pool = make_pool(server)
    try:
        response = await pool.request(request(), b"{}")
        assert response.headers.get(b"x-big") == big
        assert response.body == b"{}"
        await pool.request(request(), b"{}")  # the PING's ACK went out before this
    finally:
        await pool.close()
    assert any(isinstance(e, h2.events.PingAckReceived) for e in server.events)


async def test_flow_control_both_ways(server: ScriptedServer) -> None:
    large = bytes(range(256)) * 12_000  # 3 MiB: past our stream and connection windows' halves

    async def answer(s: Server, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        await s.respond_slowly(stream_id, large if body == b"large please" else body)

    server.answer = answer
    server.settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
    pool = make_pool(server)
    try:
        upload = b"u" * 50_000  # fifty times the server's stream window
        assert (await pool.request(request(), upload)).body == upload
        assert (await pool.request(request(), b"large please")).body == large
    finally:
        await pool.close()


async def test_one_stream_per_connection_queues_sends_on_the_pool(server: ScriptedServer) -> None:
    server.settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}
    pool = make_pool(server, max_connections=2)
    try:
        answers = await asyncio.gather(*(pool.request(request(), b"%d" % i) for i in range(20)))
    finally:
        await pool.close()
    assert [a.body for a in answers] == [b"%d" % i for i in range(20)]
    assert len(server.connections) == 2


async def test_a_reset_stream_fails_alone(server: ScriptedServer) -> None:
    async def answer(s: Server, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if body == b"refuse":
            s.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            s.flush()
        else:
            s.respond(stream_id, 200, body)

    server.answer = answer
    pool = make_pool(server)
    try:
        with pytest.raises(StreamReset):
            await pool.request(request(), b"refuse")
        assert (await pool.request(request(), b"fine")).body == b"fine"
    finally:
        await pool.close()
    assert len(server.connections) == 1


async def test_a_timeout_resets_the_stream_and_replaces_the_connection(
    server: ScriptedServer,
) -> None:
    never = asyncio.Event()

    async def stall(s: Server, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if body == b"stall":
            await never.wait()
        s.respond(stream_id, 200, body)

    server.answer = stall
    pool = make_pool(server, timeout=0.3)
    try:
        with pytest.raises(TimeoutError):
            await pool.request(request(), b"stall")
        assert (await pool.request(request(), b"next")).body == b"next"
    finally:
        await pool.close()
    assert len(server.connections) == 2
    resets = [e for e in server.events if isinstance(e, h2.events.StreamReset)]
    assert [r.error_code for r in resets] == [h2.errors.ErrorCodes.CANCEL]
