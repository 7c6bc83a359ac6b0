"""What every JWT relaypush reads has in common, on PyJWT.

PyJWT decodes the parts and checks the signature; before it, :func:`read_jwt` holds a token
to the compact form exactly (RFC 7515: three base64url parts without padding, ASCII only, at
most :data:`MAX_TOKEN_LENGTH` characters) and to the one ``alg`` (and ``typ``) the caller
accepts. The claims' meaning is each verifier's own, read with :func:`seconds_claim` and
friends, so PyJWT's claim checks are all off. Every problem, whatever PyJWT or the input
raises, is an ``Unauthorized`` naming the ``Authorization`` header, as the relay envelope wants:
never another exception.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import jwt
from jwt.types import Options

from relaypush.domain.errors import FieldError, Unauthorized

__all__ = [
    "AUTHORIZATION_HEADER",
    "MAX_TOKEN_LENGTH",
    "read_jwt",
    "refuse",
    "seconds_claim",
    "verify_signature",
]

AUTHORIZATION_HEADER: Final = "Authorization"
MAX_TOKEN_LENGTH: Final = 8192
_COMPACT: Final = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_PART: Final = re.compile(r"[A-Za-z0-9_-]*")

_SIGNATURE_ONLY: Final[Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
    "enforce_minimum_key_length": True,
}
"""PyJWT checks the signature and nothing else: each verifier reads its claims itself."""
_NOTHING: Final[Options] = {"verify_signature": False}


def refuse(description: str) -> Unauthorized:
    """A 401 naming the ``Authorization`` header."""
    return Unauthorized(fields=(FieldError(AUTHORIZATION_HEADER, description, "header"),))


def _framing(token: str) -> None:
    if len(token) > MAX_TOKEN_LENGTH:
        raise refuse(f"malformed JWT: longer than {MAX_TOKEN_LENGTH} characters")
    if _COMPACT.fullmatch(token) is not None:
        return
    parts = token.split(".")
    if len(parts) != 3:
        raise refuse("malformed JWT: expected three base64url parts separated by '.'")
    bad = next(i for i, part in enumerate(parts) if _PART.fullmatch(part) is None)
    raise refuse(f"malformed JWT: the {('header', 'claims', 'signature')[bad]} is not base64url")


def read_jwt(token: str, *, alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims of a compact JWT whose framing is right, whose ``alg`` is
    ``alg`` and whose ``typ``, if any, is ``JWT``; ``Unauthorized`` otherwise.

    The signature part is not read here: :func:`verify_signature` does that, and a signature
    part that does not decode is a signature that does not verify.
    """
    _framing(token)
    unsigned = token.rsplit(".", 1)[0] + "."  # an empty signature part decodes to b""
    try:
        header = jwt.get_unverified_header(unsigned)
    except jwt.PyJWTError as exc:
        raise refuse(f"malformed JWT: the header is not base64url JSON ({exc})") from exc
    if header.get("alg") != alg:
        raise refuse(f"unsupported JWT alg {header.get('alg')!r}: expected {alg!r}")
    if header.get("typ", "JWT") != "JWT":
        raise refuse(f"unsupported JWT typ {header.get('typ')!r}: expected 'JWT'")
    try:
        claims: dict[str, Any] = jwt.decode(unsigned, options=_NOTHING)
    except jwt.PyJWTError as exc:
        raise refuse(f"malformed JWT: the claims are not base64url JSON ({exc})") from exc
    return header, claims


def verify_signature(token: str, key: Any, *, alg: str, refusal: str) -> None:
    """Refuse, saying ``refusal``, unless ``token``'s ``alg`` signature verifies with ``key``.
    Call :func:`read_jwt` first: then only the signature part is left to go wrong."""
    try:
        jwt.decode(token, key, algorithms=[alg], options=_SIGNATURE_ONLY)
    except (jwt.InvalidSignatureError, jwt.DecodeError):
        raise refuse(refusal) from None
    except jwt.PyJWTError as exc:
        raise refuse(f"malformed JWT: {exc}") from exc


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
