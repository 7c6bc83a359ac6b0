"""Web Push subscriptions: what a ``webpush`` client registers, and where it may point.

A ``webpush`` client's token is the browser's ``PushSubscription`` as JSON text::

    {"endpoint": "https://fcm.googleapis.com/fcm/send/…", "expirationTime": null,
     "keys": {"p256dh": "<base64url, 65 bytes>", "auth": "<base64url, 16 bytes>"}}

:func:`parse_subscription` checks its shape: at most :data:`MAX_SUBSCRIPTION_LENGTH` bytes, an
``https`` endpoint with a host and no user info, ``p256dh`` an uncompressed point on P-256 (the
curve equation is checked here, in plain integers, so the domain needs no crypto library) and a
16-byte ``auth`` secret. :func:`host_allowed` says whether the endpoint's host is on the allow-list
(``RELAYPUSH_WEBPUSH_HOSTS``): exact names, or ``*.example.com`` for any name under it. The
registration refuses a subscription that fails either (400 naming ``token``), and the provider
asks again before every fetch, since the list may have changed since.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from relaypush.domain.errors import FieldError

__all__ = [
    "AUTH_SECRET_LENGTH",
    "MAX_SUBSCRIPTION_LENGTH",
    "InvalidSubscription",
    "Subscription",
    "host_allowed",
    "is_p256_point",
    "parse_subscription",
    "token_problems",
    "topic_for",
]

#: The longest subscription a ``webpush`` client may register, in bytes of UTF-8.
MAX_SUBSCRIPTION_LENGTH: Final = 2048
AUTH_SECRET_LENGTH: Final = 16
_POINT_LENGTH: Final = 65
_MAX_TOPIC: Final = 32
_TOPIC: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+={0,2}")

# P-256 (secp256r1): y^2 = x^3 - 3x + b over the prime field of _P.
_P: Final = 2**256 - 2**224 + 2**192 + 2**96 - 1
_B: Final = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


class InvalidSubscription(ValueError):
    """A token that is not a usable Web Push subscription; the message says why (no secret)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A checked subscription: the push resource and the browser's keys."""

    endpoint: str
    p256dh: bytes
    auth: bytes

    @property
    def host(self) -> str:
        """The endpoint's host name, in lower case (an IPv6 address without brackets)."""
        return (urlsplit(self.endpoint).hostname or "").lower()

    @property
    def origin(self) -> str:
        """``https://host[:port]``: the ``aud`` of the VAPID token (RFC 8292, section 2)."""
        parts = urlsplit(self.endpoint)
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
        return f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"


def is_p256_point(data: bytes) -> bool:
    """Whether ``data`` is an uncompressed point on P-256 (``04 || x || y``, 65 bytes)."""
    if len(data) != _POINT_LENGTH or data[0] != 0x04:
        return False
    x = int.from_bytes(data[1:33], "big")
    y = int.from_bytes(data[33:], "big")
    if x >= _P or y >= _P:
        return False
    return (y * y - (x * x * x - 3 * x + _B)) % _P == 0


def _b64url(value: object, what: str) -> bytes:
    if not isinstance(value, str) or _B64URL.fullmatch(value) is None:
        raise InvalidSubscription(f"keys.{what} must be base64url text")
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise InvalidSubscription(f"keys.{what} must be base64url text") from None


def parse_subscription(token: str) -> Subscription:
    """The subscription in ``token``; :class:`InvalidSubscription` saying what is wrong."""
    if len(token.encode()) > MAX_SUBSCRIPTION_LENGTH:
        raise InvalidSubscription(
            f"a Web Push subscription is at most {MAX_SUBSCRIPTION_LENGTH} bytes"
        )
    try:
        document = json.loads(token)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise InvalidSubscription(
            'must be the browser\'s PushSubscription as JSON: {"endpoint", "keys": {"p256dh", '
            '"auth"}}'
        )
    endpoint = document.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidSubscription("endpoint is required: the push service's URL")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise InvalidSubscription("endpoint is not a URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidSubscription("endpoint must be an https URL with a host")
    if parts.username is not None or parts.password is not None or port == 0:
        raise InvalidSubscription("endpoint must be an https URL with a host")
    keys = document.get("keys")
    if not isinstance(keys, dict):
        raise InvalidSubscription('keys is required: {"p256dh", "auth"}')
    p256dh = _b64url(keys.get("p256dh"), "p256dh")
    if not is_p256_point(p256dh):
        raise InvalidSubscription("keys.p256dh must be an uncompressed P-256 public key")
    auth = _b64url(keys.get("auth"), "auth")
    if len(auth) != AUTH_SECRET_LENGTH:
        raise InvalidSubscription(f"keys.auth must be {AUTH_SECRET_LENGTH} bytes")
    return Subscription(endpoint=endpoint, p256dh=p256dh, auth=auth)


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` is one of ``patterns``: a name (or address) compared without case, or
    ``*.example.com``, which takes any name under ``example.com`` but not ``example.com``."""
    host = host.lower().rstrip(".")
    if not host:
        return False
    for pattern in patterns:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern.startswith("*."):
            suffix = pattern[1:]
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif pattern and host == pattern:
            return True
    return False


def token_problems(token: str, *, hosts: Iterable[str]) -> list[FieldError]:
    """What is wrong with a ``webpush`` client's ``token``, as field errors naming ``token``."""
    try:
        subscription = parse_subscription(token)
    except InvalidSubscription as exc:
        return [FieldError("token", str(exc))]
    allowed = tuple(hosts)
    if not host_allowed(subscription.host, allowed):
        what = f"the endpoint's host {subscription.host!r} is not an allowed push service"
        what += f" ({', '.join(allowed)})" if allowed else " (none is allowed)"
        return [FieldError("token", what)]
    return []


def topic_for(collapse_id: str) -> str:
    """The ``Topic`` header for a collapse id: itself when it is at most 32 characters of the
    base64url alphabet, else the first 32 characters of its SHA-256 in base64url."""
    if _TOPIC.fullmatch(collapse_id):
        return collapse_id
    digest = base64.urlsafe_b64encode(hashlib.sha256(collapse_id.encode()).digest())
    return digest.decode()[:_MAX_TOPIC]
