"""Ed25519 keys of the audit trail: the chainer signs checkpoints, auditors verify them.

Keys are configured as hex: the 32-byte seed of the private key
(``RELAYPUSH_AUDIT_SIGNING_KEY``) and the 32-byte raw public key (``RELAYPUSH_AUDIT_PUBLIC_KEY``).
A key's id, written into each checkpoint, is the fingerprint of its raw public key
(``sha256:`` and 12 hex digits), so a verifier holding several keys (after a rotation) knows
which one to try.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relaypush.audit.errors import AuditKeyError
from relaypush.logs import fingerprint

__all__ = ["PublicKey", "SigningKey", "generate_signing_key", "public_key_from_hex"]


def _key_bytes(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise AuditKeyError(f"the {what} is not hex") from None
    if len(raw) != 32:
        raise AuditKeyError(f"the {what} must be 32 bytes (64 hex digits), not {len(raw)}")
    return raw


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key that checks checkpoint signatures."""

    raw: bytes
    key: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return fingerprint(self.raw)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key that signs checkpoints; its repr never shows the secret."""

    key: Ed25519PrivateKey
    public_key: PublicKey

    @classmethod
    def from_hex(cls, seed_hex: str) -> SigningKey:
        """The key whose 32-byte seed is ``seed_hex``; raises :class:`AuditKeyError`."""
        return cls.from_private(
            Ed25519PrivateKey.from_private_bytes(_key_bytes(seed_hex, "audit signing key"))
        )

    @classmethod
    def from_private(cls, key: Ed25519PrivateKey) -> SigningKey:
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(key, PublicKey(raw, key.public_key()))

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"


def generate_signing_key() -> SigningKey:
    """A fresh random key (tests, benchmarks, and operators creating one)."""
    return SigningKey.from_private(Ed25519PrivateKey.generate())


def public_key_from_hex(text: str) -> PublicKey:
    """The public key in ``text`` (64 hex digits); raises :class:`AuditKeyError`."""
    raw = _key_bytes(text, "audit public key")
    return PublicKey(raw, Ed25519PublicKey.from_public_bytes(raw))
