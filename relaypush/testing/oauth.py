"""A stand-in for Google's OAuth2 token endpoint: JWT-bearer grants for service accounts.

Each :class:`ServiceAccount` has a fresh RSA key; :meth:`OAuthStandIn.grant` checks an
assertion the way Google does (RS256 signature by the account's key, ``kid`` naming it, ``iss``
the account's e-mail, ``aud`` the token URL, a scope, an unexpired ``exp`` at most an hour after
``iat``) and issues an opaque access token that lives ``token_lifetime`` seconds. Tokens can be
expired or revoked at will, so that a client sees FCM's 401.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["JWT_BEARER", "Grant", "IssuedToken", "OAuthStandIn", "ServiceAccount"]

JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_LEEWAY: Final = 60


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """One stand-in service account: its project, e-mail and RSA key."""

    project_id: str
    client_email: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, project_id: str) -> ServiceAccount:
        return cls(
            project_id=project_id,
            client_email=f"relaypush-standin@{project_id}.iam.gserviceaccount.com",
            private_key_id=secrets.token_hex(20),
            private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def info(self, token_uri: str) -> dict[str, str]:
        """The service-account JSON document Google would hand out, ``token_uri`` included."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": str(int(self.private_key_id[:12], 16)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + self.client_email.replace("@", "%40"),
            "universe_domain": "googleapis.com",
        }


@dataclass(slots=True)
class IssuedToken:
    """An access token the stand-in issued, and whether it still opens FCM."""

    value: str
    account: ServiceAccount
    expires_at: float
    revoked: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


@dataclass(frozen=True, slots=True)
class Grant:
    """One request to the token endpoint: the assertion's claims, and what it came to."""

    claims: dict[str, Any]
    token: str | None
    error: str | None


class OAuthStandIn:
    """The token endpoint's logic: accounts, grants, and the tokens it issued."""

    def __init__(self, *, token_lifetime: int = 3600) -> None:
        self.token_url = ""  # set by the server that serves the endpoint
        self.token_lifetime = token_lifetime
        self.grants: list[Grant] = []
        self.refusal: str | None = None
        self._accounts: dict[str, ServiceAccount] = {}
        self._tokens: dict[str, IssuedToken] = {}

    def account(self, project_id: str) -> ServiceAccount:
        """The service account of ``project_id``, made on first use."""
        for account in self._accounts.values():
            if account.project_id == project_id:
                return account
        account = ServiceAccount.generate(project_id)
        self._accounts[account.client_email] = account
        return account

    def token(self, value: str) -> IssuedToken | None:
        """The issued token ``value`` if it is still valid."""
        token = self._tokens.get(value)
        return token if token is not None and token.valid(time.monotonic()) else None

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on."""
        now = time.monotonic()
        for token in self._tokens.values():
            token.expires_at = min(token.expires_at, now)

    def revoke(self, value: str) -> None:
        """Token ``value`` is refused from now on."""
        if value in self._tokens:
            self._tokens[value].revoked = True

    def grant(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer a token request (form-encoded ``grant_type`` and ``assertion``)."""
        form = {k: v[0] for k, v in parse_qs(body.decode("latin-1")).items()}
        claims: dict[str, Any] = {}
        try:
            if form.get("grant_type") != JWT_BEARER:
                raise _Refused("unsupported_grant_type", "only the JWT-bearer grant is served")
            claims, account = self._verify(form.get("assertion", ""))
            if self.refusal is not None:
                raise _Refused("invalid_grant", self.refusal)
        except _Refused as exc:
            self.grants.append(Grant(claims, None, exc.error))
            return 400, {"error": exc.error, "error_description": exc.description}
        value = "ya29.standin-" + secrets.token_urlsafe(32)
        expires_at = time.monotonic() + self.token_lifetime
        self._tokens[value] = IssuedToken(value, account, expires_at)
        self.grants.append(Grant(claims, value, None))
        return 200, {
            "access_token": value,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }

    def _verify(self, assertion: str) -> tuple[dict[str, Any], ServiceAccount]:
        try:
            head_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64decode(head_b64))
            claims = json.loads(_b64decode(claims_b64))
            signature = _b64decode(signature_b64)
        except (ValueError, binascii.Error) as exc:
            raise _Refused("invalid_grant", f"malformed assertion: {exc}") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _Refused("invalid_grant", "malformed assertion")
        account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            raise _Refused("invalid_grant", "Invalid JWT: unknown issuer")
        if header.get("alg") != "RS256" or header.get("kid") != account.private_key_id:
            raise _Refused("invalid_grant", "Invalid JWT: alg must be RS256 and kid the key id")
        try:
            account.private_key.public_key().verify(
                signature,
                f"{head_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature as exc:
            raise _Refused("invalid_grant", "Invalid JWT Signature.") from exc
        if claims.get("aud") != self.token_url:
            raise _Refused("invalid_grant", f"Invalid JWT: aud must be {self.token_url}")
        if not isinstance(claims.get("scope"), str) or not claims["scope"]:
            raise _Refused("invalid_scope", "no scope requested")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            raise _Refused("invalid_grant", "Invalid JWT: iat and exp are required")
        if iat > now + _LEEWAY or exp < now - _LEEWAY or exp - iat > 3600:
            raise _Refused("invalid_grant", "Invalid JWT: Token must be a short-lived token")
        return claims, account


class _Refused(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
