"""The parts of a compact JWT that every JWT relaypush reads has in common.

base64url without padding, a JSON object per part, numeric date claims; each problem is an
``Unauthorized`` naming the ``Authorization`` header, as the relay envelope wants.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from relaypush.domain.errors import FieldError, Unauthorized

__all__ = [
    "AUTHORIZATION_HEADER",
    "MAX_TOKEN_LENGTH",
    "JwtParts",
    "b64url_decode",
    "b64url_encode",
    "json_part",
    "refuse",
    "seconds_claim",
    "split_jwt",
]

AUTHORIZATION_HEADER: Final = "Authorization"
MAX_TOKEN_LENGTH: Final = 8192
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


def refuse(description: str) -> Unauthorized:
    """A 401 naming the ``Authorization`` header."""
    return Unauthorized(fields=(FieldError(AUTHORIZATION_HEADER, description, "header"),))


def b64url_decode(part: str) -> bytes:
    """Strict unpadded base64url; ``ValueError`` otherwise."""
    if _B64URL.fullmatch(part) is None or len(part) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def json_part(part: str, what: str) -> dict[str, Any]:
    """The JSON object a JWT part encodes (``what`` is "header" or "claims")."""
    try:
        value = msgspec.json.decode(b64url_decode(part))
    except (msgspec.MsgspecError, ValueError, binascii.Error) as exc:
        raise refuse(f"malformed JWT: the {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise refuse(f"malformed JWT: the {what} is not a JSON object")
    return value


def seconds_claim(claims: dict[str, Any], name: str) -> float | None:
    """A numeric date claim (``iat``, ``exp``, ``nbf``) as finite Unix seconds, or None."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse(f"JWT claim {name!r} must be a number of Unix seconds")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise refuse(f"JWT claim {name!r} must be a finite number of Unix seconds")
    return seconds


@dataclass(frozen=True, slots=True)
class JwtParts:
    """A compact JWT taken apart: its header, its claims still encoded (read them once the
    signature verified), the signature bytes and the input the signature covers."""

    header: dict[str, Any]
    claims_b64: str
    signature: bytes
    signing_input: bytes


def split_jwt(token: str, *, alg: str) -> JwtParts:
    """Check a JWT's framing and header (``alg``, ``typ``) and decode its signature."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise refuse(f"malformed JWT: longer than {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise refuse("malformed JWT: expected three base64url parts separated by '.'")
    header_b64, claims_b64, signature_b64 = parts
    header = json_part(header_b64, "header")
    if header.get("alg") != alg:
        raise refuse(f"unsupported JWT alg {header.get('alg')!r}: expected {alg!r}")
    if header.get("typ", "JWT") != "JWT":
        raise refuse(f"unsupported JWT typ {header.get('typ')!r}: expected 'JWT'")
    try:
        signature = b64url_decode(signature_b64)
    except (ValueError, binascii.Error) as exc:
        raise refuse("malformed JWT: the signature is not base64url") from exc
    return JwtParts(header, claims_b64, signature, f"{header_b64}.{claims_b64}".encode("ascii"))
