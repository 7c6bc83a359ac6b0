"""APNs delivery over HTTP/2: token (.p8) or certificate (.p12 / .pem) authentication.

Requests go through :class:`~relaypush.delivery.http2.Http2Pool`, relaypush's own HTTP/2 client:
a few TLS connections to ``apns_url`` (or ``apns_sandbox_url``), trusting ``apns_ca_file``
when set, each carrying up to the server's ``MAX_CONCURRENT_STREAMS`` requests at once. A
request is :func:`apns_body` byte for byte with the contract's headers (``apns-id``,
``apns-topic``, ``apns-push-type: alert``, ``apns-priority: 10`` and, with a key, the
``authorization`` of :class:`ProviderToken`: one ES256 JWT per key, shared by every connection
and by the production and sandbox providers of that key, renewed once it is 40 minutes old).
A 200 is delivered under the ``apns-id`` sent, which APNs echoes (so it is not decoded).

Every send is bounded by ``timeout``. A connection whose request timed out leaves the pool at
once (the next send opens a fresh one) and closes when its last stream is done; after GOAWAY
the connection takes no new streams and the sends the server did not take answer Retry at once,
and after a connection error every send waiting on it does. Answers are sorted by
:data:`REASONS` (in :mod:`relaypush.delivery.apns_outcomes`); an unknown reason is retried and
logged.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import quote

import msgspec
import structlog

from relaypush.config import ConfigError, Settings
from relaypush.delivery.apns_auth import (
    ApnsCertificate,
    ProviderToken,
    credentials_from_settings,
)
from relaypush.delivery.apns_outcomes import REASONS, outcome_for
from relaypush.delivery.http2 import Http2Error, Origin, Response
from relaypush.delivery.http2_pool import Http2Pool
from relaypush.delivery.outcomes import CredentialsInvalid, Outcome, Retry, Target
from relaypush.delivery.retry_after import retry_after
from relaypush.domain.events import NotificationAccepted
from relaypush.domain.provider_payload import apns_body, apns_id
from relaypush.logs import fingerprint
from relaypush.metrics import REGISTRY, Registry

__all__ = ["REASONS", "ApnsCertificate", "ApnsProvider", "ProviderToken", "outcome_for"]

log = structlog.get_logger(__name__)

_PATH: Final = "/3/device/"


class _ErrorBody(msgspec.Struct):
    reason: str | None = None


class ApnsProvider:
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
        try:
            origin = Origin.parse(url)
        except ValueError as exc:
            raise ConfigError(f"an APNs URL is https://host[:port], not {url!r}") from exc
        self.endpoint = origin
        self.timeout = timeout
        self._auth = auth
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        context.set_alpn_protocols(["h2"])
        if isinstance(auth, ApnsCertificate):
            auth.load_into(context)
        self._clock = clock
        self._method: Final = ((b":method", b"POST"), (b":scheme", b"https"))
        self._fixed: Final = (
            (b":authority", origin.authority.encode()),
            (b"apns-topic", topic.encode()),
            (b"apns-push-type", b"alert"),
            (b"apns-priority", b"10"),
        )
        opened = metrics.counter(
            "relaypush_apns_connections_opened_total", "APNs connections opened", ["endpoint"]
        )
        retired = metrics.counter(
            "relaypush_apns_connections_retired_total",
            "APNs connections taken out of use (timeout, GOAWAY, error, idle)",
            ["endpoint"],
        )

        def on_retired(why: str) -> None:
            retired.inc(endpoint=origin.authority)
            log.info("apns_connection_retired", endpoint=origin.authority, why=why)

        self._pool = Http2Pool(
            origin,
            context,
            timeout=timeout,
            max_connections=max_connections,
            opened=lambda: opened.inc(endpoint=origin.authority),
            retired=on_retired,
        )
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, sandbox: bool, timeout: float = 10.0
    ) -> ApnsProvider | None:
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
            *self._method,
            (b":path", (_PATH + quote(target.token, safe="")).encode()),
            *self._fixed,
            (b"apns-id", sent_id.encode()),
        ]
        if isinstance(auth, ProviderToken):
            headers.append((b"authorization", auth.header().encode()))
        try:
            answer = await self._pool.request(headers, apns_body(notification))
        except TimeoutError:
            return Retry(f"no answer from APNs within {self.timeout:g} s")
        except Http2Error as exc:
            return Retry(f"APNs connection failed: {type(exc).__name__}: {exc}")
        return self._outcome(answer, sent_id, target)

    def _outcome(self, answer: Response, sent_id: str, target: Target) -> Outcome:
        if answer.status == 200:  # APNs echoes the apns-id it was sent: no need to decode it
            return outcome_for(200, None, apns_id=sent_id)
        returned_id = (answer.headers.get(b"apns-id") or b"").decode("latin-1")
        reason = None
        if answer.body:
            try:
                reason = msgspec.json.decode(answer.body, type=_ErrorBody).reason
            except msgspec.DecodeError:
                reason = None
        if reason == "ExpiredProviderToken" and isinstance(self._auth, ProviderToken):
            self._auth.expired_by_apns()
        after = retry_after(
            (answer.headers.get(b"retry-after") or b"").decode("latin-1"), now=datetime.now(UTC)
        )
        return outcome_for(
            answer.status,
            reason,
            apns_id=returned_id or sent_id,
            after=after,
            token=fingerprint(target.token),
            tenant_id=target.tenant_id,
            endpoint=self.endpoint.authority,
        )

    async def close(self) -> None:
        """Close every connection; later sends answer Retry."""
        self._closed = True
        await self._pool.close()
