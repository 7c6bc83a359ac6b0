"""A small asyncio HTTP server for provider stand-ins: HTTP/2 (h2) and HTTP/1.1, over TLS.

At start it makes a throwaway CA and a certificate for ``127.0.0.1`` and ``localhost``, and
writes the CA to :attr:`StandInServer.ca_file` for clients to trust. ALPN offers ``h2`` and
``http/1.1``; a client that negotiates nothing but opens with the HTTP/2 preface (aioapns does)
gets HTTP/2 too. With ``tls=False`` it serves HTTP/1.1 (and prior-knowledge HTTP/2) over TCP.

Every request goes to one async handler::

    async def handler(request: StandInRequest) -> StandInResponse:
        return StandInResponse(200, {"content-type": "application/json"}, b"{}")

    async with StandInServer(handler) as server:
        ...  # server.url, server.ca_file

An HTTP/2 response is HEADERS then DATA frames, END_STREAM on the last DATA frame (which
carries body bytes), or HEADERS with END_STREAM when there is no body: never a trailing empty
DATA frame, which aioapns cannot parse. HTTP/1.1 is keep-alive with ``Content-Length`` bodies.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from relaypush.testing.tls import issue_server_certificate

__all__ = ["Handler", "StandInRequest", "StandInResponse", "StandInServer"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_HEAD = 64 * 1024
_HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class StandInRequest:
    """One request: header names in lower case; ``http_version`` is ``HTTP/2`` or ``HTTP/1.1``.

    ``connection`` numbers the server's connections from 1, so tests can tell them apart.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    http_version: str
    connection: int = 0


@dataclass(frozen=True, slots=True)
class StandInResponse:
    """What the handler answers; ``content-length`` is added by the server."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


Handler = Callable[[StandInRequest], Awaitable[StandInResponse]]


class StandInServer:
    """An HTTP/2 + HTTP/1.1 server on ``host:port`` (0 picks a free port) calling ``handler``."""

    def __init__(
        self,
        handler: Handler,
        *,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrent_streams: int = 1000,
    ) -> None:
        self.handler = handler
        self.tls = tls
        self.host = host
        self.max_concurrent_streams = max_concurrent_streams
        self._port = port
        self._server: asyncio.Server | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file: Path | None = None
        self._connections: set[_Connection] = set()
        self._numbers = itertools.count(1)

    async def start(self) -> None:
        """Make the certificates (with ``tls``) and start listening."""
        context: ssl.SSLContext | None = None
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="relaypush-standin-")
            files = issue_server_certificate(Path(self._tmp.name), self.host)
            self._ca_file = files.ca_file
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(files.cert_file, files.key_file)
            context.set_alpn_protocols(["h2", "http/1.1"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self, next(self._numbers)), self.host, self._port, ssl=context
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, drop every connection and remove the certificates."""
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.abort()
            await self._server.wait_closed()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> StandInServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` (``http://`` without TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self._port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the server's certificate."""
        if self._ca_file is None:
            raise RuntimeError("the stand-in has no CA file: it is not started or has tls=False")
        return self._ca_file

    def client_context(self) -> ssl.SSLContext:
        """A client SSL context that trusts this server (``httpx.AsyncClient(verify=...)``)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def goaway(self) -> None:
        """Send GOAWAY on every HTTP/2 connection and close it; requests in flight get no answer."""
        for connection in list(self._connections):
            connection.goaway()


class _Connection(asyncio.Protocol):
    """One client connection: sniffs HTTP/2 or HTTP/1.1, then serves it."""

    def __init__(self, server: StandInServer, number: int) -> None:
        self._server = server
        self._number = number
        self._transport: asyncio.Transport | None = None
        self._mode = "sniff"
        self._buffer = bytearray()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        # HTTP/2
        self._h2: h2.connection.H2Connection | None = None
        self._streams: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        self._window_open = asyncio.Event()
        self._flush_scheduled = False
        # HTTP/1.1
        self._queue: deque[StandInRequest] = deque()
        self._worker: asyncio.Task[None] | None = None

    # -- connection life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            self._start_h2()
        elif alpn == "http/1.1":
            self._mode = "http1"

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        for task in self._tasks.values():
            task.cancel()
        if self._worker is not None:
            self._worker.cancel()
        self._window_open.set()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._mode == "h2":
            self._h2_received(data)
        elif self._mode == "http1":
            self._buffer += data
            self._h1_parse()
        else:
            self._buffer += data
            if len(self._buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(self._buffer):
                return
            pending, self._buffer = bytes(self._buffer), bytearray()
            if pending.startswith(H2_PREFACE):
                self._start_h2()
                self._h2_received(pending)
            else:
                self._mode = "http1"
                self.data_received(pending)

    # -- HTTP/2

    def _start_h2(self) -> None:
        self._mode = "h2"
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        codes = h2.settings.SettingCodes
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: self._server.max_concurrent_streams,
                codes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self._h2.initiate_connection()
        self._flush()

    def _h2_received(self, data: bytes) -> None:
        conn = self._h2
        assert conn is not None
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self._close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._streams[event.stream_id] = (event.headers, bytearray())
            elif isinstance(event, h2.events.DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream[1].extend(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._h2_request(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self._streams.pop(event.stream_id, None)
                task = self._tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._window_open.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close()
        self._flush()

    def _h2_request(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        raw_headers, body = stream
        pseudo: dict[str, str] = {}
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            if key.startswith(":"):
                pseudo[key] = text
            else:
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        request = StandInRequest(
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            headers=headers,
            body=bytes(body),
            http_version="HTTP/2",
            connection=self._number,
        )
        task = asyncio.get_running_loop().create_task(self._h2_respond(stream_id, request))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(stream_id, None))

    async def _h2_respond(self, stream_id: int, request: StandInRequest) -> None:
        response = await self._answer(request)
        conn = self._h2
        assert conn is not None
        headers = [(b":status", str(response.status).encode())]
        headers += _response_headers(response)
        body = response.body
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            while body:
                window = min(
                    conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size
                )
                if window <= 0:
                    self._window_open.clear()
                    self._flush()
                    await self._window_open.wait()
                    continue
                chunk, body = body[:window], body[window:]
                conn.send_data(stream_id, chunk, end_stream=not body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # the client reset the stream or the connection is closing
        self._schedule_flush()

    def goaway(self) -> None:
        if self._h2 is None or self._transport is None or self._transport.is_closing():
            return
        self._h2.close_connection()
        self._flush()
        self._close()

    def _schedule_flush(self) -> None:
        """Write once per loop iteration, however many responses were made in it."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._h2 is None or self._transport is None or self._transport.is_closing():
            return
        data = self._h2.data_to_send()
        if data:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- HTTP/1.1

    def _h1_parse(self) -> None:
        """Queue every complete request in the buffer; answer them in order."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    self._h1_fail(431)
                return
            try:
                method, path, version, headers = _parse_head(bytes(self._buffer[:end]))
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._h1_fail(400)
                return
            if "transfer-encoding" in headers:
                self._h1_fail(501)
                return
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            self._queue.append(
                StandInRequest(method, path, headers, body, version, connection=self._number)
            )
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(self._h1_serve())

    async def _h1_serve(self) -> None:
        while self._queue and self._transport is not None and not self._transport.is_closing():
            request = self._queue.popleft()
            response = await self._answer(request)
            keep = request.headers.get("connection", "").lower() != "close" and (
                request.http_version == "HTTP/1.1"
                or request.headers.get("connection", "").lower() == "keep-alive"
            )
            self._h1_write(response, keep_alive=keep)
            if not keep:
                self._close()

    def _h1_write(self, response: StandInResponse, *, keep_alive: bool) -> None:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        lines = [f"HTTP/1.1 {response.status} {phrase}"]
        lines += [f"{k.decode()}: {v.decode()}" for k, v in _response_headers(response)]
        if not keep_alive:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(head + response.body)

    def _h1_fail(self, status: int) -> None:
        self._h1_write(StandInResponse(status), keep_alive=False)
        self._close()

    # -- both

    async def _answer(self, request: StandInRequest) -> StandInResponse:
        try:
            return await self._server.handler(request)
        except Exception as exc:
            return StandInResponse(500, {"content-type": "text/plain"}, repr(exc).encode())


def _response_headers(response: StandInResponse) -> list[tuple[bytes, bytes]]:
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name.lower() not in _HOP_BY_HOP
    ]
    headers.append((b"content-length", str(len(response.body)).encode()))
    return headers


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers of an HTTP/1.x request; ``ValueError`` when malformed."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, version = request_line.split(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ValueError(f"unsupported version {version!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method, path, version, headers
