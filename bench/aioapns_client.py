"""The benchmark's baseline: relaypush's APNs client as it was before the h2 client.

This is ``relaypush/delivery/apns.py`` of commit a6acc55, built on aioapns's connection pool
and protocol, kept here only so ``python -m bench.delivery --provider-clients`` can measure the
client it replaced in the same run. relaypush itself no longer depends on aioapns (the bench
gets it from the ``dev`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit

import h2.errors
import h2.events
import h2.exceptions
import msgspec
import structlog
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsTLSClientProtocol,
)
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectError
from h2.settings import SettingCodes

from relaypush.config import ConfigError, Settings
from relaypush.delivery.apns_auth import (
    ApnsCertificate,
    ProviderToken,
    credentials_from_settings,
)
from relaypush.delivery.apns_outcomes import outcome_for
from relaypush.delivery.outcomes import CredentialsInvalid, Outcome, Retry, Target
from relaypush.domain.events import NotificationAccepted
from relaypush.domain.provider_payload import apns_body, apns_id
from relaypush.logs import fingerprint
from relaypush.metrics import REGISTRY, Registry

__all__ = ["AioapnsProvider"]

log = structlog.get_logger(__name__)

_CLOSING_ERRORS: Final = (ConnectionClosed, ApnsConnectError, h2.exceptions.H2Error, OSError)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int
    authority: str

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"an APNs URL is https://host[:port], not {url!r}")
        port = parts.port or 443
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(parts.hostname, port, host if port == 443 else f"{host}:{port}")


@dataclass(slots=True)
class _Exchange:
    """One request's stream: the answer so far, and the future that gets it when complete."""

    future: asyncio.Future[_Exchange]
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Connection(APNsTLSClientProtocol):
    """aioapns's h2 connection, with our request and a per-stream answer."""

    def __init__(self, pool: _Pool) -> None:
        super().__init__(pool.apns_topic or "", asyncio.get_running_loop(), None, None)
        self._pool = pool
        self._exchanges: dict[int, _Exchange] = {}
        self._settled = asyncio.Event()  # the server's SETTINGS came (or the connection died)
        self._window = asyncio.Event()
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.retired = False
        self._flush_soon = False

    @property
    def is_busy(self) -> bool:
        closing = self.transport is None or self.transport.is_closing()
        return self.retired or closing or bool(super().is_busy)

    async def settled(self) -> None:
        """Wait for the server's SETTINGS, so the stream limit is known before the first send."""
        await self._settled.wait()
        if self.retired:
            raise ConnectionClosed("closed before the server's SETTINGS arrived")

    async def post(self, headers: list[tuple[str, str]], body: bytes) -> _Exchange:
        """Send one request on a new stream and wait for its whole answer."""
        stream_id: int = await self.free_channels.acquire()
        exchange = _Exchange(self.loop.create_future())
        self._exchanges[stream_id] = exchange
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
            while body:
                window = min(
                    self.conn.local_flow_control_window(stream_id),
                    self.conn.max_outbound_frame_size,
                )
                if window <= 0:
                    self._window.clear()
                    self.flush()
                    await self._window.wait()
                    if self.retired:
                        raise ConnectionClosed("closed while waiting for flow control")
                    continue
                chunk, body = body[:window], body[window:]
                self.conn.send_data(stream_id, chunk, end_stream=not body)
            if not self._flush_soon:  # one write for all the requests made in this loop turn
                self._flush_soon = True
                self.loop.call_soon(self.flush)
            return await exchange.future
        finally:
            if self._exchanges.pop(stream_id, None) is not None:  # cancelled or failed
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                    self.flush()
                self._stream_done()

    def retire(self) -> None:
        """Leave the pool now; close once no stream is waiting any more."""
        if not self.retired:
            self.retired = True
            self._pool.retired(self)
        if not self._exchanges:
            self.close()

    def flush(self) -> None:
        self._flush_soon = False
        if self.transport is not None and not self.transport.is_closing():
            super().flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(f"HTTP/2 protocol error: {exc}")
            return
        for event in events:
            exchange = self._exchanges.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and exchange is not None:
                exchange.headers = dict(event.headers)
                exchange.status = int(exchange.headers.get(b":status", b"0"))
            elif isinstance(event, h2.events.DataReceived):
                if exchange is not None:
                    exchange.body += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and exchange is not None:
                self._settle(event.stream_id, exchange)
            elif isinstance(event, h2.events.StreamReset) and exchange is not None:
                error = ConnectionClosed(f"stream reset by APNs ({event.error_code!r})")
                self._settle(event.stream_id, exchange, error)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                limit = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                if limit is not None:
                    self.free_channels.bound = limit.new_value
                self._settled.set()
                self._window.set()
            elif isinstance(event, h2.events.WindowUpdated):
                self._window.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._fail_all(f"GOAWAY from APNs ({event.error_code!r})")
                return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._fail_all(f"connection lost: {exc or 'closed'}")
        if not self.lost.done():
            self.lost.set_result(None)

    def _settle(self, stream_id: int, exchange: _Exchange, error: Exception | None = None) -> None:
        del self._exchanges[stream_id]
        self._stream_done()
        if exchange.future.done():
            return
        if error is not None:
            exchange.future.set_exception(error)
        else:
            exchange.future.set_result(exchange)

    def _stream_done(self) -> None:
        self.free_channels.release()
        if self.retired and not self._exchanges:
            self.close()

    def _fail_all(self, why: str) -> None:
        """The connection is finished: every waiting stream fails with ``why``."""
        self.retired = True
        self._pool.retired(self, why)
        exchanges, self._exchanges = self._exchanges, {}
        for exchange in exchanges.values():
            if not exchange.future.done():
                exchange.future.set_exception(ConnectionClosed(why))
        self._settled.set()
        self._window.set()
        self.close()


class _Pool(APNsBaseConnectionPool):
    """aioapns's pool, opening :class:`_Connection`s to our endpoint."""

    def __init__(
        self,
        endpoint: _Endpoint,
        context: ssl.SSLContext,
        topic: str,
        *,
        size: int,
        metrics: Registry,
    ) -> None:
        super().__init__(topic=topic, max_connections=size, max_connection_attempts=1)
        self.endpoint = endpoint
        self.ssl_context = context
        self._opened = metrics.counter(
            "relaypush_apns_connections_opened_total", "APNs connections opened", ["endpoint"]
        )
        self._retired = metrics.counter(
            "relaypush_apns_connections_retired_total",
            "APNs connections taken out of use (timeout, GOAWAY, error, idle)",
            ["endpoint"],
        )

    async def create_connection(self) -> _Connection:
        try:
            _, connection = await self.loop.create_connection(
                lambda: _Connection(self),
                self.endpoint.host,
                self.endpoint.port,
                ssl=self.ssl_context,
                server_hostname=self.endpoint.host,
            )
        except OSError as exc:
            log.warning("apns_connect_failed", endpoint=self.endpoint.authority, error=str(exc))
            raise
        assert isinstance(connection, _Connection)
        try:
            await connection.settled()
        except BaseException:
            connection.close()
            raise
        self._opened.inc(endpoint=self.endpoint.authority)
        return connection

    async def acquire(self) -> APNsBaseClientProtocol:
        try:
            return await super().acquire()
        except ApnsConnectError as exc:  # aioapns logs the cause and raises without it
            raise ApnsConnectError(f"cannot connect to {self.endpoint.authority}") from exc

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(connection)

    def retired(self, connection: _Connection, why: str = "retired") -> None:
        if connection in self.connections:
            self.discard_connection(connection)
            self._retired.inc(endpoint=self.endpoint.authority)
            log.info("apns_connection_retired", endpoint=self.endpoint.authority, why=why)


class _ErrorBody(msgspec.Struct):
    reason: str | None = None


class AioapnsProvider:
    """Delivers to one APNs endpoint (production or sandbox) with one set of credentials."""

    def __init__(
        self,
        auth: ProviderToken | ApnsCertificate,
        *,
        topic: str,
        url: str = "https://api.push.apple.com",
        ca_file: Path | None = None,
        timeout: float = 10.0,
        max_connections: int = 4,
        clock: Callable[[], float] = time.time,
        metrics: Registry = REGISTRY,
    ) -> None:
        self.topic = topic
        self.endpoint = _Endpoint.parse(url)
        self.timeout = timeout
        self._auth = auth
        self._context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._context.set_alpn_protocols(["h2"])
        if isinstance(auth, ApnsCertificate):
            auth.load_into(self._context)
        self._max_connections = max_connections
        self._clock = clock
        self._metrics = metrics
        self._pool: _Pool | None = None  # made at the first send, inside the event loop
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, sandbox: bool, timeout: float = 10.0
    ) -> AioapnsProvider | None:
        """The default tenant's provider for ``apns_url`` (or ``apns_sandbox_url``), or None
        when ``apns_topic`` or both the key and the certificate file are unset.

        Raises ``ConfigError`` when the credentials or the CA file cannot be used. Providers
        made from the same key share one :class:`ProviderToken`.
        """
        credentials = credentials_from_settings(settings)
        if credentials is None:
            return None
        auth, topic = credentials
        url = settings.apns_sandbox_url if sandbox else settings.apns_url
        try:
            return cls(auth, topic=topic, url=url, ca_file=settings.apns_ca_file, timeout=timeout)
        except OSError as exc:
            raise ConfigError(f"cannot use RELAYPUSH_APNS_CA_FILE: {exc}") from exc

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        """Send ``notification`` to ``target.token``; never raises for what APNs answered."""
        if self._closed:
            return Retry("the APNs provider is closed")
        auth = self._auth
        if isinstance(auth, ApnsCertificate) and self._clock() >= auth.not_after.timestamp():
            return CredentialsInvalid(f"the APNs certificate expired {auth.not_after}")
        sent_id = apns_id(target.tenant_id, target.client_id, notification.message_id)
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", f"/3/device/{quote(target.token, safe='')}"),
            (":authority", self.endpoint.authority),
            ("apns-id", sent_id),
            ("apns-topic", self.topic),
            ("apns-push-type", "alert"),
            ("apns-priority", "10"),
        ]
        if isinstance(self._auth, ProviderToken):
            headers.append(("authorization", self._auth.header()))
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout):
                acquired = await self._connections().acquire()
                assert isinstance(acquired, _Connection)
                connection = acquired
                answer = await connection.post(headers, apns_body(notification))
        except TimeoutError:
            if connection is not None:
                connection.retire()
            return Retry(f"no answer from APNs within {self.timeout:g} s")
        except _CLOSING_ERRORS as exc:
            if connection is not None:
                connection.retire()
            return Retry(f"APNs connection failed: {type(exc).__name__}: {exc}")
        return self._outcome(answer, sent_id, target)

    def _outcome(self, answer: _Exchange, sent_id: str, target: Target) -> Outcome:
        returned_id = answer.headers.get(b"apns-id", b"").decode("latin-1")
        try:
            reason = msgspec.json.decode(answer.body or b"{}", type=_ErrorBody).reason
        except msgspec.DecodeError:
            reason = None
        if reason == "ExpiredProviderToken" and isinstance(self._auth, ProviderToken):
            self._auth.expired_by_apns()
        after = _retry_after(answer.headers.get(b"retry-after", b"").decode("latin-1"))
        return outcome_for(
            answer.status,
            reason,
            apns_id=returned_id or sent_id,
            after=after,
            token=fingerprint(target.token),
            tenant_id=target.tenant_id,
            endpoint=self.endpoint.authority,
        )

    def _connections(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(
                self.endpoint,
                self._context,
                self.topic,
                size=self._max_connections,
                metrics=self._metrics,
            )
        return self._pool

    async def close(self) -> None:
        """Close every connection; later sends answer Retry."""
        self._closed = True
        if self._pool is not None:
            connections, self._pool.connections = self._pool.connections, []
            for connection in connections:
                connection.close()
            lost = [c.lost for c in connections if isinstance(c, _Connection)]
            if lost:
                await asyncio.wait(lost, timeout=self.timeout)


def _retry_after(value: str) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date), else None."""
    if not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
