"""Sealing secrets at rest: AES-256-GCM under a key ring that can rotate.

Used for tenants' provider credentials (:mod:`relaypush.tenancy.store`) and for the keys that seal
clients' personal fields (:mod:`relaypush.privacy`); it imports nothing else of relaypush, so
either may use it without pulling in the other.

Each ciphertext is stored with the id of the key that sealed it, a fresh 96-bit nonce, and is
bound (as GCM associated data) to where it belongs: tenant, credential kind and fingerprint, so
that a row copied to another tenant or slot does not open. The ring has one *current* key, which
seals, and any number of *old* keys, which only open: rotating is configuring a new current key,
moving the old one to the old keys, then re-sealing (``relaypush tenants rotate-key``, or lazily
when a credential sealed under an old key is read).

A key is 32 random bytes, configured as base64 (standard or URL-safe alphabet): generate one
with ``openssl rand -base64 32``. A key's id is derived from the key (a short SHA-256), so the
same key always has the same id and nothing but the key has to be configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "CredentialKeyError",
    "Keyring",
    "Sealed",
    "UnknownKey",
    "generate_key",
    "key_id_of",
    "parse_key",
]

KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12


class CredentialKeyError(Exception):
    """A sealed credential cannot be opened: unknown key, or not what was sealed."""


class UnknownKey(CredentialKeyError):
    """The credential was sealed under a key that is not configured (current or old)."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"sealed under key {key_id!r}, which is neither RELAYPUSH_CREDENTIALS_KEY nor in "
            "RELAYPUSH_CREDENTIALS_OLD_KEYS"
        )


@dataclass(frozen=True, slots=True)
class Sealed:
    """A ciphertext (GCM tag included), the nonce it was sealed with and the sealing key's id."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


def parse_key(text: str) -> bytes:
    """The 32 bytes of a base64 key; ``ValueError`` saying what is wrong otherwise."""
    value = text.strip()
    try:
        raw = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a credentials key is base64 of 32 random bytes") from exc
    if len(raw) != KEY_BYTES:
        raise ValueError(f"a credentials key is 32 bytes (base64), not {len(raw)}")
    return raw


def key_id_of(key: bytes) -> str:
    """The id stored next to what ``key`` seals: ``k`` and 12 hex digits of a SHA-256."""
    return "k" + hashlib.sha256(b"relaypush-credentials-key\x00" + key).hexdigest()[:12]


def generate_key() -> str:
    """A new random key, base64, for ``RELAYPUSH_CREDENTIALS_KEY``."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


class Keyring:
    """The current key (seals and opens) and old keys (open only), by key id."""

    def __init__(self, current: bytes, old: Iterable[bytes] = ()) -> None:
        if len(current) != KEY_BYTES:
            raise ValueError("the current key must be 32 bytes")
        self.current_id = key_id_of(current)
        self._keys: dict[str, AESGCM] = {}
        for key in (*old, current):
            if len(key) != KEY_BYTES:
                raise ValueError("every key must be 32 bytes")
            self._keys[key_id_of(key)] = AESGCM(key)

    @classmethod
    def from_text(cls, current: str, old: Iterable[str] = ()) -> Keyring:
        """From base64 keys as configured; ``ValueError`` naming the bad one."""
        try:
            current_key = parse_key(current)
        except ValueError as exc:
            raise ValueError(f"RELAYPUSH_CREDENTIALS_KEY: {exc}") from exc
        old_keys = []
        for index, text in enumerate(old):
            try:
                old_keys.append(parse_key(text))
            except ValueError as exc:
                raise ValueError(f"RELAYPUSH_CREDENTIALS_OLD_KEYS item {index + 1}: {exc}") from exc
        return cls(current_key, old_keys)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, plaintext: bytes, *, context: bytes) -> Sealed:
        """``plaintext`` sealed under the current key, bound to ``context``."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = self._keys[self.current_id].encrypt(nonce, plaintext, context)
        return Sealed(self.current_id, nonce, ciphertext)

    def open(self, sealed: Sealed, *, context: bytes) -> bytes:
        """The plaintext of ``sealed``; :class:`CredentialKeyError` if it cannot be opened."""
        aead = self._keys.get(sealed.key_id)
        if aead is None:
            raise UnknownKey(sealed.key_id)
        try:
            return aead.decrypt(sealed.nonce, sealed.ciphertext, context)
        except InvalidTag as exc:
            raise CredentialKeyError(
                f"the credential sealed under key {sealed.key_id!r} does not open: it was "
                "altered, or moved to another tenant or slot"
            ) from exc
