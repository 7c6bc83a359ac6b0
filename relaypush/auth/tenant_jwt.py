"""HS256 JWTs that authorise the tenant routes: ``sub`` is the tenant id, ``exp`` is required.

A compact JWS ``header.claims.signature`` with header ``{"alg": "HS256", "typ": "JWT"}``
(``typ`` optional), signed with HMAC-SHA256 under ``RELAYPUSH_TENANT_JWT_SECRET`` (its UTF-8
bytes, at least 32 of them), checked by PyJWT. Only HS256 is accepted: ``none`` and every other
``alg`` are refused before the signature is read, and the signature is compared in constant
time. ``exp`` (and ``nbf`` when present) are honoured with a small leeway for clock skew.
"""

from __future__ import annotations

import hmac
import time
from typing import Final

import jwt
import msgspec

from relaypush.auth.jwt_parts import read_jwt, refuse, seconds_claim, verify_signature
from relaypush.config import TENANT_JWT_SECRET_MIN_BYTES

__all__ = ["DEFAULT_LEEWAY", "TenantClaims", "make_tenant_jwt", "verify_tenant_jwt"]

#: Seconds of clock skew allowed on ``exp`` and ``nbf``.
DEFAULT_LEEWAY: Final = 30.0


class TenantClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims relaypush reads from a tenant JWT."""

    sub: str
    exp: float
    iat: float | None = None


def _check_secret(secret: str) -> None:
    if len(secret.encode()) < TENANT_JWT_SECRET_MIN_BYTES:
        raise ValueError(f"an HS256 secret has at least {TENANT_JWT_SECRET_MIN_BYTES} bytes")


def verify_tenant_jwt(
    token: str,
    *,
    secret: str,
    tenant_id: str,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
) -> TenantClaims:
    """The claims of ``token`` if it authorises ``tenant_id``; else ``Unauthorized`` saying why.

    ``token`` is the JWT alone (the caller strips ``Bearer ``). ``secret`` has at least
    ``TENANT_JWT_SECRET_MIN_BYTES`` bytes (``ValueError`` otherwise: the settings say so first).
    """
    _check_secret(secret)
    _, claims = read_jwt(token, alg="HS256")
    verify_signature(
        token,
        secret,
        alg="HS256",
        refusal="JWT signature does not verify with the tenant JWT secret",
    )
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
    # surrogatepass: a JSON escape may carry a lone surrogate, which plain UTF-8 cannot encode
    if not hmac.compare_digest(sub.encode("utf-8", "surrogatepass"), tenant_id.encode()):
        raise refuse("JWT claim 'sub' is another tenant: a tenant JWT opens its own tenant only")
    return TenantClaims(sub=sub, exp=exp, iat=seconds_claim(claims, "iat"))


def make_tenant_jwt(secret: str, *, tenant_id: str, exp: float, iat: float | None = None) -> str:
    """An HS256 tenant JWT for ``tenant_id`` expiring at ``exp`` (for operators and tests)."""
    _check_secret(secret)
    claims: dict[str, object] = {"sub": tenant_id, "exp": int(exp)}
    if iat is not None:
        claims["iat"] = int(iat)
    return jwt.encode(claims, secret, algorithm="HS256")
