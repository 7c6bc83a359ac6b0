"""Web Push delivery: ``POST`` the encrypted message to the subscription's endpoint, with VAPID.

For each send the client's token is read as a subscription (:mod:`relaypush.domain.webpush`);
its endpoint must still be ``https`` on a host of ``RELAYPUSH_WEBPUSH_HOSTS`` (the list may have
changed since the client registered), else nothing is fetched and the message is rejected. The
body is :func:`~relaypush.domain.provider_payload.webpush_message` encrypted for the browser
(:mod:`relaypush.delivery.webpush_ece`), sent with::

    Authorization: vapid t=<ES256 JWT for the endpoint's origin>, k=<public key>
    Content-Encoding: aes128gcm
    TTL: <seconds left before the delivery deadline>
    Urgency: high
    Topic: <from the notification's collapse id, when it has one>

Redirects are never followed. What the push service answers is sorted by :data:`STATUSES`:
201 delivered, 404 and 410 a dead subscription, 413 a message that can never be sent, 429 and
5xx retried (with ``Retry-After``). 400, 401 and 403 fail that message for good and are counted
per tenant (``relaypush_webpush_refused_total``), but never suspend the tenant: a browser that
subscribed with another application server key draws a 403 too, and no client may darken a
tenant. Anything else is retried and logged.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Final, TypedDict, Unpack

import httpx
import structlog

from relaypush.config import Settings
from relaypush.delivery.outcomes import (
    Delivered,
    Outcome,
    Rejected,
    Retry,
    Target,
    TokenInvalid,
)
from relaypush.delivery.retry_after import retry_after
from relaypush.delivery.vapid import VapidKey, key_from_settings
from relaypush.delivery.webpush_ece import encrypt
from relaypush.domain.events import NotificationAccepted
from relaypush.domain.provider_payload import webpush_message
from relaypush.domain.webpush import (
    InvalidSubscription,
    host_allowed,
    parse_subscription,
    topic_for,
)
from relaypush.logs import fingerprint
from relaypush.metrics import REGISTRY, Registry

__all__ = [
    "REFUSALS",
    "STATUSES",
    "URGENCY",
    "WebPushOptions",
    "WebPushProvider",
    "interpret",
    "request_headers",
]

log = structlog.get_logger(__name__)

OutcomeKind = type[Delivered] | type[TokenInvalid] | type[Rejected] | type[Retry]

#: What each push service status means (RFC 8030, and what the browsers' services answer).
STATUSES: Final[Mapping[int, OutcomeKind]] = {
    200: Delivered,
    201: Delivered,
    202: Delivered,
    # never followed: a subscription may not lead the server anywhere else
    301: Rejected,
    302: Rejected,
    303: Rejected,
    307: Rejected,
    308: Rejected,
    # refused: our request or VAPID token, or a subscription made with another key
    400: Rejected,
    401: Rejected,
    403: Rejected,
    # the subscription is gone
    404: TokenInvalid,
    410: TokenInvalid,
    413: Rejected,
    429: Retry,
    500: Retry,
    502: Retry,
    503: Retry,
    504: Retry,
}
#: Refusals counted per tenant in ``relaypush_webpush_refused_total``; none suspends it.
REFUSALS: Final = frozenset({400, 401, 403})
#: The ``Urgency`` of every relay push: delivered at once, as APNs priority 10 and FCM HIGH.
URGENCY: Final = "high"
_MAX_DETAIL: Final = 200


def request_headers(
    authorization: str, ttl: int, *, collapse_id: str | None = None
) -> dict[str, str]:
    """The headers of one Web Push request (``Topic`` only for a collapse id)."""
    headers = {
        "authorization": authorization,
        "content-encoding": "aes128gcm",
        "content-type": "application/octet-stream",
        "ttl": str(max(0, ttl)),
        "urgency": URGENCY,
    }
    if collapse_id:
        headers["topic"] = topic_for(collapse_id)
    return headers


def _phrase(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def interpret(status: int, headers: Mapping[str, str], body: bytes, *, now: datetime) -> Outcome:
    """What one push service answer means (``now`` resolves a dated ``Retry-After``)."""
    kind = STATUSES.get(status)
    if kind is None and status >= 500:
        kind = Retry
    what = _phrase(status)
    if status in REFUSALS:
        detail = body[:_MAX_DETAIL].decode("utf-8", "replace").strip()
        what += f": {detail}" if detail else ""
    if kind is Delivered:
        location = headers.get("location")
        return Delivered(fingerprint(location) if location else None)
    if kind is Retry or kind is None:
        prefix = "unknown answer " if kind is None else ""
        return Retry(prefix + what, retry_after(headers.get("retry-after"), now=now))
    if 300 <= status < 400:
        return Rejected(f"{what}: redirects are not followed")
    return kind(what)


class WebPushOptions(TypedDict, total=False):
    """Keyword options of :class:`WebPushProvider` and its ``from_settings``."""

    verify: Path | None
    ttl: float
    http2: bool
    max_connections: int
    connect_timeout: float
    timeout: float
    clock: Callable[[], datetime]
    metrics: Registry


class WebPushProvider:
    """Sends Web Push messages signed with one VAPID key, to endpoints on ``hosts`` only.

    ``verify`` is a CA file to trust instead of the system's (a proxy, a stand-in); ``ttl`` is
    how long after acceptance a message is worth keeping (the delivery deadline): each request's
    ``TTL`` is what is left of it.
    """

    def __init__(
        self,
        key: VapidKey,
        *,
        hosts: Iterable[str],
        verify: Path | None = None,
        ttl: float = 86400.0,
        http2: bool = True,
        max_connections: int = 64,
        connect_timeout: float = 5.0,
        timeout: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Registry = REGISTRY,
    ) -> None:
        self.key = key
        self._hosts = tuple(hosts)
        self._ttl = ttl
        self._clock = clock
        context: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(verify)) if verify is not None else True
        )
        self._client = httpx.AsyncClient(
            http2=http2,
            verify=context,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )
        self._refused = metrics.counter(
            "relaypush_webpush_refused_total",
            "Web Push messages a push service refused with 400, 401 or 403, by tenant",
            ("tenant_id", "status"),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, **options: Unpack[WebPushOptions]
    ) -> WebPushProvider | None:
        """The default tenant's provider, or None when no VAPID key is configured.

        Raises ``ConfigError`` when the key or the subject cannot be used.
        """
        key = key_from_settings(settings)
        if key is None:
            return None
        options.setdefault("verify", settings.webpush_ca_file)
        options.setdefault("ttl", settings.delivery_deadline)
        return cls(key, hosts=settings.webpush_hosts, **options)

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        """Send ``notification`` to the subscription in ``target.token``; never raises for what
        the push service answered."""
        try:
            subscription = parse_subscription(target.token)
        except InvalidSubscription as exc:
            return TokenInvalid(f"not a Web Push subscription: {exc}")
        if not host_allowed(subscription.host, self._hosts):
            return Rejected(f"endpoint_not_allowed: {subscription.host!r} is not in the allow-list")
        now = self._clock()
        left = self._ttl - (now - notification.occurred_at).total_seconds()
        body = encrypt(webpush_message(notification), subscription.p256dh, subscription.auth)
        headers = request_headers(self.key.authorization(subscription.origin), int(left))
        try:
            response = await self._client.post(subscription.endpoint, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return Retry(f"timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return Retry(f"connection: {type(exc).__name__}: {exc}")
        status = response.status_code
        outcome = interpret(status, response.headers, response.content, now=datetime.now(UTC))
        if status in REFUSALS:
            self._refused.inc(tenant_id=target.tenant_id, status=str(status))
            log.warning(
                "webpush_refused",
                status=status,
                host=subscription.host,
                tenant_id=target.tenant_id,
                token=fingerprint(target.token),
            )
        elif isinstance(outcome, Retry) and outcome.reason.startswith("unknown answer"):
            log.warning(
                "webpush_unknown_answer",
                status=status,
                host=subscription.host,
                tenant_id=target.tenant_id,
                token=fingerprint(target.token),
            )
        return outcome

    async def close(self) -> None:
        """Close the push services' connections."""
        await self._client.aclose()
