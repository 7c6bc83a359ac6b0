"""VAPID (RFC 8292): the application server identifies itself to push services.

Every Web Push request carries ``Authorization: vapid t=<JWT>, k=<public key>``: an ES256 JWT
``{"typ": "JWT", "alg": "ES256"}`` over ``{"aud": <endpoint origin>, "exp": <seconds>, "sub":
<subject>}``, and the key's uncompressed point in base64url. A push service checks the signature
with ``k``, that ``aud`` is its own origin and that ``exp`` is less than 24 hours away; a browser's
subscription made with another key is refused (403).

:class:`VapidKey` signs one JWT per origin, valid for :data:`LIFETIME`, and reuses it until
:data:`RENEW_BEFORE` of it is left, so a busy dispatcher signs a handful a day, not one a send.
Signed with ``cryptography`` (raw ``r || s``), as the APNs provider token is.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from relaypush.config import ConfigError, Settings
from relaypush.delivery.webpush_ece import public_bytes

__all__ = [
    "LIFETIME",
    "RENEW_BEFORE",
    "VapidKey",
    "b64url",
    "check_subject",
    "key_from_settings",
]

#: How long a VAPID JWT is valid (RFC 8292 allows at most 24 hours).
LIFETIME: Final = 12 * 3600
#: Sign a new JWT for an origin once the current one has less than this left.
RENEW_BEFORE: Final = 6 * 3600
_HEADER: Final = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9"  # {"typ":"JWT","alg":"ES256"}
_MAILTO: Final = re.compile(r"mailto:[^\s@]+@[^\s@]+")
_HTTPS: Final = re.compile(r"https://[^\s/]+(/\S*)?")


def b64url(data: bytes) -> str:
    """Unpadded base64url, as VAPID and the Push API write keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def check_subject(subject: str) -> str:
    """``subject`` when it is a ``mailto:`` or ``https:`` URL (RFC 8292, section 2.1); else
    ``ValueError``."""
    if _MAILTO.fullmatch(subject) is None and _HTTPS.fullmatch(subject) is None:
        raise ValueError(
            "the VAPID subject is a mailto: or https: URL, e.g. mailto:ops@example.com"
        )
    return subject


class VapidKey:
    """A VAPID key pair and its subject; :meth:`authorization` gives the request header."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        subject: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if key.curve.name != "secp256r1":
            raise ValueError("a VAPID key is a P-256 (ES256) private key")
        self.subject = check_subject(subject)
        self.public_key = b64url(public_bytes(key.public_key()))
        self._key = key
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_pem(
        cls, pem: bytes, subject: str, *, clock: Callable[[], float] = time.time
    ) -> VapidKey:
        """From a PEM private key (PKCS#8 or SEC 1); ``ValueError`` when it is not P-256."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ValueError(f"not a PEM private key: {first}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("a VAPID key is a P-256 (ES256) private key")
        return cls(key, subject, clock=clock)

    def private_pem(self) -> str:
        """The private key as PKCS#8 PEM (what a tenant's credential stores)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    def authorization(self, audience: str) -> str:
        """``vapid t=<JWT>, k=<public key>`` for the push service at origin ``audience``."""
        now = self._clock()
        cached = self._tokens.get(audience)
        if cached is None or cached[1] - now < RENEW_BEFORE:
            expires = int(now) + LIFETIME
            cached = (self._sign(audience, expires), float(expires))
            self._tokens[audience] = cached
        return f"vapid t={cached[0]}, k={self.public_key}"

    def _sign(self, audience: str, expires: int) -> str:
        claims = msgspec.json.encode({"aud": audience, "exp": expires, "sub": self.subject})
        signing_input = f"{_HEADER}.{b64url(claims)}"
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def key_from_settings(settings: Settings) -> VapidKey | None:
    """The default tenant's VAPID key, or None when ``vapid_private_key_file`` is unset;
    ``ConfigError`` when it cannot be used or ``vapid_subject`` is missing or malformed."""
    path: Path | None = settings.vapid_private_key_file
    if path is None:
        return None
    if not settings.vapid_subject:
        raise ConfigError("RELAYPUSH_VAPID_PRIVATE_KEY_FILE needs RELAYPUSH_VAPID_SUBJECT")
    try:
        return VapidKey.from_pem(path.read_bytes(), settings.vapid_subject)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot use the VAPID key {path}: {exc}") from exc
