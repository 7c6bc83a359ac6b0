"""HS256 JWTs that authorise the tenant routes: ``sub`` is the tenant id, ``exp`` is required.

A compact JWS ``header.claims.signature`` with header ``{"alg": "HS256", "typ": "JWT"}``
(``typ`` optional), signed with HMAC-SHA256 under ``RELAYPUSH_TENANT_JWT_SECRET`` (its UTF-8
bytes). Only HS256 is accepted: ``none`` and every other ``alg`` are refused before anything else
is read, and the signature is compared in constant time. ``exp`` (and ``nbf`` when present) are
honoured with a small leeway for clock skew.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Final

import msgspec

from relaypush.auth.jwt_parts import (
    b64url_encode,
    json_part,
    refuse,
    seconds_claim,
    split_jwt,
)

__all__ = ["DEFAULT_LEEWAY", "TenantClaims", "make_tenant_jwt", "verify_tenant_jwt"]

#: Seconds of clock skew allowed on ``exp`` and ``nbf``.
DEFAULT_LEEWAY: Final = 30.0
_HEADER: Final = b'{"alg":"HS256","typ":"JWT"}'


class TenantClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims relaypush reads from a tenant JWT."""

    sub: str
    exp: float
    iat: float | None = None


def _signature(secret: str, signing_input: str) -> bytes:
    return hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()


def verify_tenant_jwt(
    token: str,
    *,
    secret: str,
    tenant_id: str,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
) -> TenantClaims:
    """The claims of ``token`` if it authorises ``tenant_id``; else ``Unauthorized`` saying why.

    ``token`` is the JWT alone (the caller strips ``Bearer ``).
    """
    if not secret:
        raise ValueError("an HS256 secret must not be empty")
    jwt = split_jwt(token, alg="HS256")
    expected = _signature(secret, jwt.signing_input.decode("ascii"))
    if not hmac.compare_digest(jwt.signature, expected):
        raise refuse("JWT signature does not verify with the tenant JWT secret")
    claims = json_part(jwt.claims_b64, "claims")
    current = time.time() if now is None else now
    exp = seconds_claim(claims, "exp")
    if exp is None:
        raise refuse("JWT claim 'exp' is required")
    if current > exp + leeway:
        raise refuse(f"JWT expired {current - exp:.0f} s ago")
    nbf = seconds_claim(claims, "nbf")
    if nbf is not None and nbf > current + leeway:
        raise refuse(f"JWT is not valid for another {nbf - current:.0f} s ('nbf')")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise refuse("JWT claim 'sub' must be the tenant id")
    if not hmac.compare_digest(sub.encode(), tenant_id.encode()):
        raise refuse("JWT claim 'sub' is another tenant: a tenant JWT opens its own tenant only")
    return TenantClaims(sub=sub, exp=exp, iat=seconds_claim(claims, "iat"))


def make_tenant_jwt(secret: str, *, tenant_id: str, exp: float, iat: float | None = None) -> str:
    """An HS256 tenant JWT for ``tenant_id`` expiring at ``exp`` (for operators and tests)."""
    claims: dict[str, object] = {"sub": tenant_id, "exp": int(exp)}
    if iat is not None:
        claims["iat"] = int(iat)
    signing_input = f"{b64url_encode(_HEADER)}.{b64url_encode(msgspec.json.encode(claims))}"
    return f"{signing_input}.{b64url_encode(_signature(secret, signing_input))}"
