"""A tenant's provider credentials as values: what is sealed at rest, and their fingerprints.

Four shapes, each a tagged msgspec Struct so that one encoding covers them all:

    ApnsTokenKey        APNs token authentication: a .p8 key (PKCS#8 PEM), key id, team id, topic
    ApnsCertificateFile APNs certificate authentication: a .p12 file, its password, topic
    FcmServiceAccount   FCM HTTP v1: a service-account JSON document and its project id
    VapidKey            Web Push: a VAPID P-256 private key (PEM), its subject and public key

These values hold secrets. They are never logged (``repr`` names the kind and fingerprint only)
and never put in an event; :func:`encode_credential` is what gets encrypted and stored, and
:func:`fingerprint_of` (a SHA-256 of that encoding) is what the event log records.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from relaypush.domain.events import ApnsType, CredentialKind

__all__ = [
    "ApnsCertificateFile",
    "ApnsTokenKey",
    "Credential",
    "FcmServiceAccount",
    "VapidKey",
    "apns_type_of",
    "decode_credential",
    "encode_credential",
    "fingerprint_of",
    "kind_of",
]

_FINGERPRINT_HEX: Final = 24


class ApnsTokenKey(msgspec.Struct, frozen=True, kw_only=True, tag="apns_token"):
    """An APNs signing key (``.p8``): ES256 provider tokens signed by it open APNs."""

    topic: str
    key_id: str
    team_id: str
    pkcs8_pem: str

    def __repr__(self) -> str:
        return f"ApnsTokenKey(topic={self.topic!r}, {fingerprint_of(self)})"


class ApnsCertificateFile(msgspec.Struct, frozen=True, kw_only=True, tag="apns_certificate"):
    """An APNs client certificate with its key, as a PKCS#12 (``.p12``) file and its password."""

    topic: str
    p12: bytes
    password: str

    def __repr__(self) -> str:
        return f"ApnsCertificateFile(topic={self.topic!r}, {fingerprint_of(self)})"


class FcmServiceAccount(msgspec.Struct, frozen=True, kw_only=True, tag="fcm_v1"):
    """A Firebase service account: the JSON document Google hands out, kept as uploaded."""

    project_id: str
    document: str

    def __repr__(self) -> str:
        return f"FcmServiceAccount(project_id={self.project_id!r}, {fingerprint_of(self)})"


class VapidKey(msgspec.Struct, frozen=True, kw_only=True, tag="webpush"):
    """A VAPID key pair (RFC 8292): the private key as PKCS#8 PEM, the ``sub`` its tokens name
    (a ``mailto:`` or ``https:`` URL), and the public key (base64url of the uncompressed point),
    which is public: browsers subscribe with it."""

    private_key_pem: str
    subject: str
    public_key: str

    def __repr__(self) -> str:
        return f"VapidKey(public_key={self.public_key!r}, {fingerprint_of(self)})"


Credential = ApnsTokenKey | ApnsCertificateFile | FcmServiceAccount | VapidKey

_encoder: Final = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Credential] = msgspec.json.Decoder(Credential)


def encode_credential(credential: Credential) -> bytes:
    """The bytes that are sealed and stored for ``credential``."""
    return _encoder.encode(credential)


def decode_credential(data: bytes) -> Credential:
    """The credential :func:`encode_credential` encoded; ``msgspec.ValidationError`` if not one."""
    return _decoder.decode(data)


def fingerprint_of(credential: Credential) -> str:
    """A stable, non-reversible name for ``credential``: ``sha256:`` and 24 hex digits.

    It covers everything stored (a new password or topic is a new fingerprint), and the material
    hashed always holds a private key, so the fingerprint cannot be guessed back into a secret.
    """
    digest = hashlib.sha256(b"relaypush-credential\x00" + encode_credential(credential))
    return "sha256:" + digest.hexdigest()[:_FINGERPRINT_HEX]


def kind_of(credential: Credential) -> CredentialKind:
    """Which credential slot of a tenant ``credential`` fills."""
    match credential:
        case FcmServiceAccount():
            return "fcm_v1"
        case VapidKey():
            return "webpush"
        case _:
            return "apns"


def apns_type_of(credential: Credential) -> ApnsType | None:
    """``token`` or ``certificate`` for APNs credentials, None for the others."""
    match credential:
        case ApnsTokenKey():
            return "token"
        case ApnsCertificateFile():
            return "certificate"
        case _:
            return None
