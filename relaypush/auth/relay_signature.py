"""Verification of the relay's Ed25519 signature on pushes.

The relay sends ``X-Ed25519-Signature`` (hex of a 64-byte signature) and ``X-Ed25519-Timestamp``
(Unix seconds). The signed message is ``f"{timestamp}.{len(body)}."`` followed by the raw body
bytes. Unlike the reference server, the timestamp must lie within ``max_age`` seconds of now, and
a signature accepted once is refused as replayed while its timestamp is still inside the window.
The replay memory is per process and holds only signatures whose window is still open.
"""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from relaypush.domain.errors import FieldError, Unauthorized
from relaypush.domain.public_keys import relay_key_problem

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "RelaySignatureVerifier",
    "make_relay_signature",
    "relay_key_problem",
    "signed_message",
]

SIGNATURE_HEADER: Final = "X-Ed25519-Signature"
TIMESTAMP_HEADER: Final = "X-Ed25519-Timestamp"

_SIGNATURE_HEX: Final = re.compile(r"[0-9A-Fa-f]{128}")
_TIMESTAMP: Final = re.compile(r"[0-9]{1,15}")


def signed_message(timestamp: str, body: bytes) -> bytes:
    """The bytes the relay signs: ``f"{timestamp}.{len(body)}."`` then the raw body."""
    return f"{timestamp}.{len(body)}.".encode() + body


def _refuse(header: str, description: str) -> Unauthorized:
    return Unauthorized(fields=(FieldError(header, description, "header"),))


class RelaySignatureVerifier:
    """Checks relay signatures against one public key and remembers accepted signatures."""

    def __init__(
        self,
        public_key_hex: str,
        *,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``public_key_hex``: the relay's 32-byte Ed25519 key as hex; else ``ValueError``."""
        problem = relay_key_problem(public_key_hex)
        if problem is not None:
            raise ValueError(problem)
        raw = bytes.fromhex(public_key_hex.strip())
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._key = Ed25519PublicKey.from_public_bytes(raw)
        self._max_age = max_age
        self._clock = clock
        # Accepted signatures, and a heap of (window closes at, signature) to forget them by.
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[float, bytes]] = []

    @property
    def max_age(self) -> float:
        """Seconds a timestamp may lie before or after now."""
        return self._max_age

    def verify(self, signature: str | None, timestamp: str | None, body: bytes) -> None:
        """Accept a signed push or raise ``Unauthorized`` naming the header at fault.

        Refused: a missing header (each missing one is listed), a signature that is not 128 hex
        characters, a timestamp that is not an integer or lies more than ``max_age`` seconds
        from now, a signature that does not verify, and a signature already accepted.
        """
        missing = [
            FieldError(header, "header is required", "header")
            for header, value in ((SIGNATURE_HEADER, signature), (TIMESTAMP_HEADER, timestamp))
            if not value
        ]
        if missing:
            raise Unauthorized(fields=missing)
        assert signature is not None
        assert timestamp is not None

        if _SIGNATURE_HEX.fullmatch(signature) is None:
            raise _refuse(
                SIGNATURE_HEADER,
                "must be 128 hexadecimal characters (a 64-byte Ed25519 signature)",
            )
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise _refuse(TIMESTAMP_HEADER, "must be an integer number of Unix seconds")
        now = self._clock()
        age = now - int(timestamp)
        if age > self._max_age:
            raise _refuse(
                TIMESTAMP_HEADER, f"is {age:.0f} s old, more than the {self._max_age:g} s allowed"
            )
        if -age > self._max_age:
            raise _refuse(
                TIMESTAMP_HEADER,
                f"is {-age:.0f} s in the future, more than the {self._max_age:g} s allowed",
            )

        sig = bytes.fromhex(signature)
        try:
            self._key.verify(sig, signed_message(timestamp, body))
        except InvalidSignature:
            raise _refuse(SIGNATURE_HEADER, "does not verify for this timestamp and body") from None

        self._forget_expired(now)
        if sig in self._seen:
            raise _refuse(SIGNATURE_HEADER, "was already used: replayed request refused")
        self._seen.add(sig)
        heapq.heappush(self._expiry, (int(timestamp) + self._max_age, sig))

    def forget(self, signature: str) -> None:
        """Let ``signature`` be accepted again, e.g. when its request failed with a 5xx.

        Call it only when nothing of the request was recorded, or when recording is idempotent.
        """
        if _SIGNATURE_HEX.fullmatch(signature) is not None:
            self._seen.discard(bytes.fromhex(signature))

    def __len__(self) -> int:
        """How many accepted signatures are remembered."""
        return len(self._seen)

    def _forget_expired(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            _, sig = heapq.heappop(expiry)
            self._seen.discard(sig)


def make_relay_signature(
    private_key: Ed25519PrivateKey, timestamp: int | str, body: bytes
) -> tuple[str, str]:
    """``(X-Ed25519-Signature, X-Ed25519-Timestamp)`` header values for ``body``, as the relay."""
    ts = str(timestamp)
    return private_key.sign(signed_message(ts, body)).hex(), ts
