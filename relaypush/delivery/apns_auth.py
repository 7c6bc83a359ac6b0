"""APNs credentials: the shared ES256 provider token (.p8 key) and client certificates.

A :class:`ProviderToken` is one JWT per signing key, shared by every connection and every
provider that uses the key. ``header()`` renews it once it is :data:`RENEW_AFTER` seconds old:
Apple refuses renewals more often than every 20 minutes (``TooManyProviderTokenUpdates``) and
tokens older than 60 (``ExpiredProviderToken``). The JWT is ``{"alg": "ES256", "kid": key id}``
over ``{"iss": team id, "iat": seconds}``, signed by PyJWT (ES256: raw ``r || s``).
"""

from __future__ import annotations

import base64
import secrets
import ssl
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar, Final

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from relaypush.config import ConfigError, Settings
from relaypush.logs import fingerprint

__all__ = [
    "MIN_RENEW_AGE",
    "RENEW_AFTER",
    "ApnsCertificate",
    "ProviderToken",
    "credentials_from_settings",
]

#: Renew the JWT once it is this old; Apple's band is 20 to 60 minutes.
RENEW_AFTER: Final = 40 * 60.0
#: After ``ExpiredProviderToken``, renew as soon as the JWT is this old.
MIN_RENEW_AGE: Final = 20 * 60.0


class ProviderToken:
    """The ES256 JWT of one APNs signing key, shared by every connection that uses the key.

    ``header()`` gives ``bearer <jwt>``, signing a new JWT when there is none or the current one
    is :data:`RENEW_AFTER` seconds old by ``clock``.
    """

    _shared: ClassVar[weakref.WeakValueDictionary[tuple[str, str, str], ProviderToken]] = (
        weakref.WeakValueDictionary()
    )

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key_id = key_id
        self.team_id = team_id
        self._key = key
        self._clock = clock
        self._jwt: str | None = None
        self._issued_at = 0
        self._renew_at = RENEW_AFTER

    @classmethod
    def from_pem(
        cls, pem: bytes, key_id: str, team_id: str, *, clock: Callable[[], float] = time.time
    ) -> ProviderToken:
        """From a ``.p8`` key; ``ValueError`` when it is not a P-256 private key."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a usable signing key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("an APNs signing key is a P-256 (ES256) private key")
        return cls(key, key_id, team_id, clock=clock)

    @classmethod
    def shared(cls, pem: bytes, key_id: str, team_id: str) -> ProviderToken:
        """The live token for this key, if any provider holds one; else a new one."""
        name = (team_id, key_id, fingerprint(pem))
        token = cls._shared.get(name)
        if token is None:
            token = cls._shared[name] = cls.from_pem(pem, key_id, team_id)
        return token

    @property
    def issued_at(self) -> int | None:
        return self._issued_at if self._jwt is not None else None

    def header(self) -> str:
        now = self._clock()
        if self._jwt is None or now - self._issued_at >= self._renew_at:
            self._sign(int(now))
        assert self._jwt is not None
        return f"bearer {self._jwt}"

    def expired_by_apns(self) -> None:
        """APNs said ``ExpiredProviderToken``: renew once the JWT is 20 minutes old."""
        self._renew_at = MIN_RENEW_AGE

    def _sign(self, iat: int) -> None:
        self._jwt = jwt.encode(
            {"iss": self.team_id, "iat": iat},
            self._key,
            algorithm="ES256",
            headers={"kid": self.key_id, "typ": None},  # Apple's header: alg and kid only
        )
        self._issued_at = iat
        self._renew_at = RENEW_AFTER


@dataclass(frozen=True, slots=True)
class ApnsCertificate:
    """A client certificate (with its chain) and private key for certificate authentication."""

    chain_pem: bytes
    key: PrivateKeyTypes
    not_after: datetime

    @classmethod
    def load(cls, data: bytes, password: str | None = None) -> ApnsCertificate:
        """From PKCS#12 (``.p12``) or PEM (certificate and key); ``ValueError`` if unusable."""
        secret = password.encode() if password else None
        key: PrivateKeyTypes | None
        try:
            if b"-----BEGIN" in data:
                certs = x509.load_pem_x509_certificates(data)
                key = serialization.load_pem_private_key(data, password=secret)
            else:
                key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
                certs = [c for c in (cert, *extra) if c is not None]
        except (TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"not a usable certificate: {exc}") from exc
        if key is None or not certs:
            raise ValueError("a certificate and its private key are both needed")
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        return cls(chain, key, certs[0].not_valid_after_utc)

    def load_into(self, context: ssl.SSLContext) -> None:
        """Present this certificate on ``context`` (the key touches disk only encrypted)."""
        secret = base64.b32encode(secrets.token_bytes(20))
        with tempfile.TemporaryDirectory(prefix="relaypush-apns-") as tmp:
            cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_file.write_bytes(self.chain_pem)
            key_file.write_bytes(
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(secret),
                )
            )
            context.load_cert_chain(cert_file, key_file, password=secret)


def credentials_from_settings(
    settings: Settings,
) -> tuple[ProviderToken | ApnsCertificate, str] | None:
    """The default tenant's APNs credentials and topic, or None when ``apns_topic`` or both
    the key and the certificate file are unset; ``ConfigError`` when they cannot be used.

    Keys are shared: every caller gets the same :class:`ProviderToken` for one key file.
    """
    key_file, cert_file, topic = (
        settings.apns_key_file,
        settings.apns_cert_file,
        settings.apns_topic,
    )
    if not topic or (key_file is None and cert_file is None):
        return None
    key_id, team_id = settings.apns_key_id or "", settings.apns_team_id or ""
    if key_file is not None and cert_file is not None:
        raise ConfigError("set RELAYPUSH_APNS_KEY_FILE or RELAYPUSH_APNS_CERT_FILE, not both")
    if key_file is not None and not (key_id and team_id):
        raise ConfigError("RELAYPUSH_APNS_KEY_FILE needs RELAYPUSH_APNS_KEY_ID and _TEAM_ID")
    try:
        if key_file is not None:
            return ProviderToken.shared(key_file.read_bytes(), key_id, team_id), topic
        assert cert_file is not None
        return ApnsCertificate.load(cert_file.read_bytes(), settings.apns_cert_password), topic
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot use the APNs credentials: {exc}") from exc
