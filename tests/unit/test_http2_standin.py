"""The stand-in HTTP server: HTTP/2 and HTTP/1.1 over TLS, HTTP/1.1 over TCP, frame shapes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from relaypush.testing import StandInRequest, StandInResponse, StandInServer
from relaypush.testing.http2 import H2_PREFACE


async def echo(request: StandInRequest) -> StandInResponse:
    """Answers with what it got; ``/empty`` answers 204 with no body, ``/big`` 200 KiB."""
    if request.path == "/empty":
        return StandInResponse(204)
    if request.path == "/big":
        return StandInResponse(200, body=b"x" * 200_000)
    if request.path == "/boom":
        raise RuntimeError("handler failed")
    headers = {"x-method": request.method, "x-version": request.http_version}
    headers["x-connection"] = str(request.connection)
    headers["x-seen"] = ",".join(sorted(request.headers))
    return StandInResponse(201, headers, request.path.encode() + b"|" + request.body)


@pytest.fixture(name="server")
async def fx_server() -> AsyncIterator[StandInServer]:
    async with StandInServer(echo) as server:
        yield server


@pytest.mark.parametrize("http2", [True, False])
async def test_tls_round_trip(server: StandInServer, http2: bool) -> None:
    async with httpx.AsyncClient(verify=server.client_context(), http2=http2) as client:
        response = await client.post(
            f"{server.url}/a/b?c=1", content=b"hello", headers={"X-Y": "z"}
        )
    assert response.status_code == 201
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert response.headers["x-version"] == response.http_version
    assert response.headers["x-method"] == "POST"
    assert "x-y" in response.headers["x-seen"].split(",")
    assert response.content == b"/a/b?c=1|hello"


async def test_localhost_name_is_trusted(server: StandInServer) -> None:
    async with httpx.AsyncClient(verify=server.client_context(), http2=True) as client:
        response = await client.get(f"https://localhost:{server.port}/x")
    assert response.status_code == 201


async def test_plain_tcp_http1_keeps_the_connection() -> None:
    async with (
        StandInServer(echo, tls=False) as server,
        httpx.AsyncClient() as client,
    ):
        assert server.url.startswith("http://")
        first = await client.post(f"{server.url}/1", content=b"a")
        second = await client.post(f"{server.url}/2", content=b"b" * 10_000)
    assert first.content == b"/1|a"
    assert second.content == b"/2|" + b"b" * 10_000
    assert first.headers["x-connection"] == second.headers["x-connection"]
    with pytest.raises(RuntimeError):
        _ = server.ca_file


@pytest.mark.parametrize("http2", [True, False])
async def test_many_concurrent_requests(server: StandInServer, http2: bool) -> None:
    async with httpx.AsyncClient(verify=server.client_context(), http2=http2) as client:
        responses = await asyncio.gather(
            *(client.post(f"{server.url}/{i}", content=str(i).encode()) for i in range(100))
        )
    assert [r.content for r in responses] == [f"/{i}|{i}".encode() for i in range(100)]


@pytest.mark.parametrize("http2", [True, False])
async def test_large_body_and_handler_errors(server: StandInServer, http2: bool) -> None:
    async with httpx.AsyncClient(verify=server.client_context(), http2=http2) as client:
        big = await client.get(f"{server.url}/big")
        boom = await client.get(f"{server.url}/boom")
        empty = await client.get(f"{server.url}/empty")
    assert big.content == b"x" * 200_000
    assert boom.status_code == 500
    assert b"handler failed" in boom.content
    assert (empty.status_code, empty.content) == (204, b"")


async def test_malformed_http1_request_is_a_400() -> None:
    async with StandInServer(echo, tls=False) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"NONSENSE\r\n\r\n")
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")


async def _raw_h2_exchange(
    server: StandInServer, path: str, *, alpn: bool
) -> list[h2.events.Event]:
    """Open one HTTP/2 stream by hand and return every event until the stream ends."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    if alpn:
        context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=context)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", path)]
    conn.send_headers(1, headers, end_stream=True)
    writer.write(conn.data_to_send())
    events: list[h2.events.Event] = []
    try:
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            data = await reader.read(65536)
            assert data, "the server closed the connection"
            new = conn.receive_data(data)
            for event in new:
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            writer.write(conn.data_to_send())
            events += new
    finally:
        writer.close()
    return [e for e in events if isinstance(e, h2.events.ResponseReceived | h2.events.DataReceived)]


@pytest.mark.parametrize("alpn", [True, False], ids=["alpn", "prior-knowledge"])
@pytest.mark.parametrize("path", ["/abc", "/big"])
async def test_no_trailing_empty_data_frame(server: StandInServer, alpn: bool, path: str) -> None:
    with_body = await _raw_h2_exchange(server, path, alpn=alpn)
    assert isinstance(with_body[0], h2.events.ResponseReceived)
    assert with_body[0].stream_ended is None
    data = [e for e in with_body[1:] if isinstance(e, h2.events.DataReceived)]
    assert len(data) == len(with_body) - 1 >= 1
    assert all(e.data for e in data)
    assert [e.stream_ended is not None for e in data] == [False] * (len(data) - 1) + [True]

    no_body = await _raw_h2_exchange(server, "/empty", alpn=alpn)
    assert len(no_body) == 1
    assert isinstance(no_body[0], h2.events.ResponseReceived)
    assert no_body[0].stream_ended is not None


async def test_goaway_closes_h2_connections_and_new_ones_work(server: StandInServer) -> None:
    async with httpx.AsyncClient(verify=server.client_context(), http2=True) as client:
        first = await client.get(f"{server.url}/1")
        assert server.open_connections == 1
        server.goaway()
        second = await client.get(f"{server.url}/2")
    assert first.headers["x-connection"] != second.headers["x-connection"]


def test_preface_constant() -> None:
    assert H2_PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
