"""HS256 JWTs that authorise the tenant routes: ``sub`` is the tenant id, ``exp`` is required.

A compact JWS ``header.claims.signature`` with header ``{"alg": "HS256", "typ": "JWT"}``
(``typ`` optional), signed with HMAC-SHA256 under ``RELAYPUSH_TENANT_JWT_SECRET`` (its UTF-8
bytes). Only HS256 is accepted: ``none`` and every other ``alg`` are refused before anything else
is read, and the signature is compared in constant time. ``exp`` (and ``nbf`` when present) are
honoured with a small leeway for clock skew.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from typing import Any, Final

import msgspec

from relaypush.domain.errors import FieldError, Unauthorized

__all__ = ["DEFAULT_LEEWAY", "TenantClaims", "make_tenant_jwt", "verify_tenant_jwt"]

AUTHORIZATION_HEADER: Final = "Authorization"
#: Seconds of clock skew allowed on ``exp`` and ``nbf``.
DEFAULT_LEEWAY: Final = 30.0
_MAX_TOKEN_LENGTH: Final = 8192
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_HEADER: Final = b'{"alg":"HS256","typ":"JWT"}'


class TenantClaims(msgspec.Struct, frozen=True, kw_only=True):
    """The claims relaypush reads from a tenant JWT."""

    sub: str
    exp: float


def _refuse(description: str) -> Unauthorized:
    return Unauthorized(fields=(FieldError(AUTHORIZATION_HEADER, description, "header"),))


def _b64url_decode(part: str) -> bytes:
    if _B64URL.fullmatch(part) is None or len(part) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(_b64url_decode(part))
    except (msgspec.MsgspecError, ValueError, binascii.Error) as exc:
        raise _refuse(f"malformed JWT: the {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise _refuse(f"malformed JWT: the {what} is not a JSON object")
    return value


def _seconds(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"JWT claim {name!r} must be a number of Unix seconds")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise _refuse(f"JWT claim {name!r} must be a finite number of Unix seconds")
    return seconds


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
    if len(token) > _MAX_TOKEN_LENGTH:
        raise _refuse(f"malformed JWT: longer than {_MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise _refuse("malformed JWT: expected three base64url parts separated by '.'")
    header_b64, claims_b64, signature_b64 = parts
    header = _json_object(header_b64, "header")
    if header.get("alg") != "HS256":
        raise _refuse(f"unsupported JWT alg {header.get('alg')!r}: expected 'HS256'")
    if header.get("typ", "JWT") != "JWT":
        raise _refuse(f"unsupported JWT typ {header.get('typ')!r}: expected 'JWT'")
    try:
        signature = _b64url_decode(signature_b64)
    except (ValueError, binascii.Error) as exc:
        raise _refuse("malformed JWT: the signature is not base64url") from exc
    expected = _signature(secret, f"{header_b64}.{claims_b64}")
    if not hmac.compare_digest(signature, expected):
        raise _refuse("JWT signature does not verify with the tenant JWT secret")
    claims = _json_object(claims_b64, "claims")
    current = time.time() if now is None else now
    exp = _seconds(claims, "exp")
    if exp is None:
        raise _refuse("JWT claim 'exp' is required")
    if current > exp + leeway:
        raise _refuse(f"JWT expired {current - exp:.0f} s ago")
    nbf = _seconds(claims, "nbf")
    if nbf is not None and nbf > current + leeway:
        raise _refuse(f"JWT is not valid for another {nbf - current:.0f} s ('nbf')")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _refuse("JWT claim 'sub' must be the tenant id")
    if not hmac.compare_digest(sub.encode(), tenant_id.encode()):
        raise _refuse("JWT claim 'sub' is another tenant: a tenant JWT opens its own tenant only")
    return TenantClaims(sub=sub, exp=exp)


def make_tenant_jwt(secret: str, *, tenant_id: str, exp: float, iat: float | None = None) -> str:
    """An HS256 tenant JWT for ``tenant_id`` expiring at ``exp`` (for operators and tests)."""
    claims: dict[str, object] = {"sub": tenant_id, "exp": int(exp)}
    if iat is not None:
        claims["iat"] = int(iat)
    signing_input = f"{_b64url_encode(_HEADER)}.{_b64url_encode(msgspec.json.encode(claims))}"
    return f"{signing_input}.{_b64url_encode(_signature(secret, signing_input))}"
