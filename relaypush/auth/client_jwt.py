"""Verification of the wallet's relay JWT on register and unregister.

The token (raw, or after ``Bearer ``) is a compact JWS: header ``{"alg": "EdDSA", "typ": "JWT"}``,
claims ``iss`` = ``did:key:z...`` (base58btc of the multicodec ``0xed 0x01`` + a 32-byte Ed25519
key), ``aud`` = this server's public URL, ``iat`` and an optional ``exp``, with a leeway either
way. The key in ``iss`` signs the token and must be the client being registered or deleted.
"""

from __future__ import annotations

import time
from typing import Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relaypush.auth.jwt_parts import (
    AUTHORIZATION_HEADER,
    read_jwt,
    refuse,
    seconds_claim,
    verify_signature,
)
from relaypush.domain.ids import strip_did_key

__all__ = [
    "AUTHORIZATION_HEADER",
    "DEFAULT_MAX_AGE",
    "b58decode",
    "b58encode",
    "did_key_to_ed25519",
    "ed25519_to_did_key",
    "make_client_jwt",
    "verify_client_jwt",
]


DEFAULT_MAX_AGE: Final = 86400.0
"""Seconds a JWT without ``exp`` is valid after its ``iat`` (``RELAYPUSH_CLIENT_JWT_MAX_AGE``)."""

_DID_KEY_PREFIX: Final = "did:key:z"
_ED25519_MULTICODEC: Final = b"\xed\x01"
_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}
#: A did:key for Ed25519 is 48 base58 characters; refuse long input before any arithmetic.
_MAX_B58_LENGTH: Final = 128


def b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet) of ``data``; each leading zero byte becomes ``1``."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out: list[str] = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """The bytes of base58btc ``text``; ``ValueError`` on a character outside the alphabet."""
    if len(text) > _MAX_B58_LENGTH:
        raise ValueError(f"base58 text longer than {_MAX_B58_LENGTH} characters")
    n = 0
    for c in text:
        digit = _B58_INDEX.get(c)
        if digit is None:
            raise ValueError(f"{c!r} is not a base58btc character")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def did_key_to_ed25519(did: str) -> Ed25519PublicKey:
    """The Ed25519 key named by ``did`` (``did:key:z`` + base58btc of ``0xed 0x01`` + key).

    Raises ``ValueError`` for anything that is not an Ed25519 did:key.
    """
    if not did.startswith(_DID_KEY_PREFIX):
        raise ValueError("a did:key must start with 'did:key:z' (base58btc)")
    raw = b58decode(did[len(_DID_KEY_PREFIX) :])
    if not raw.startswith(_ED25519_MULTICODEC):
        raise ValueError("the did:key is not an Ed25519 key (multicodec 0xed 0x01)")
    key = raw[len(_ED25519_MULTICODEC) :]
    if len(key) != 32:
        raise ValueError(f"an Ed25519 did:key holds 32 key bytes, got {len(key)}")
    return Ed25519PublicKey.from_public_bytes(key)


def ed25519_to_did_key(pub: bytes) -> str:
    """The did:key of a raw 32-byte Ed25519 public key."""
    if len(pub) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(pub)}")
    return _DID_KEY_PREFIX + b58encode(_ED25519_MULTICODEC + pub)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def verify_client_jwt(
    token: str,
    *,
    client_id: str,
    audience: str,
    now: float | None = None,
    leeway: float = 120.0,
    max_age: float = DEFAULT_MAX_AGE,
) -> None:
    """Accept the wallet's JWT for ``client_id`` or raise ``Unauthorized`` saying why.

    ``token`` may carry a ``Bearer `` prefix. ``client_id`` and ``iss`` are compared with their
    ``did:key:`` prefixes stripped; ``aud`` must equal ``audience`` (a trailing ``/`` aside).
    A token without ``exp`` is valid until its ``iat`` is ``max_age`` seconds old (and the
    leeway): without that bound it would be valid forever.
    """
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise refuse("a JWT is required")
    _, claims = read_jwt(token, alg="EdDSA")  # the key to verify with is in the claims

    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise refuse("JWT claim 'iss' must be a did:key string")
    try:
        key = did_key_to_ed25519(iss)
    except ValueError as exc:
        raise refuse(f"JWT claim 'iss' is not an Ed25519 did:key: {exc}") from exc
    verify_signature(
        token, key, alg="EdDSA", refusal="JWT signature does not verify with the key in 'iss'"
    )

    if strip_did_key(iss) != strip_did_key(client_id):
        raise refuse("JWT claim 'iss' is not the did:key of the client being changed")
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and _same_url(a, audience) for a in audiences):
        raise refuse(f"JWT claim 'aud' must be this server's URL {audience!r}")

    current = time.time() if now is None else now
    iat = seconds_claim(claims, "iat")
    if iat is None:
        raise refuse("JWT claim 'iat' is required")
    if iat > current + leeway:
        raise refuse(f"JWT was issued {iat - current:.0f} s in the future")
    exp = seconds_claim(claims, "exp")
    if exp is not None and current > exp + leeway:
        raise refuse(f"JWT expired {current - exp:.0f} s ago")
    if exp is None and current > iat + max_age + leeway:
        raise refuse(
            f"JWT without 'exp' issued {current - iat:.0f} s ago: such a token is valid for "
            f"{max_age:.0f} s after its 'iat'"
        )


def make_client_jwt(
    private_key: Ed25519PrivateKey,
    *,
    audience: str,
    iat: float,
    exp: float | None = None,
) -> str:
    """A relay JWT signed by ``private_key``, as a wallet SDK makes one (for tests and SDKs)."""
    pub = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    claims: dict[str, object] = {"iss": ed25519_to_did_key(pub), "aud": audience, "iat": iat}
    if exp is not None:
        claims["exp"] = exp
    return jwt.encode(claims, private_key, algorithm="EdDSA")
