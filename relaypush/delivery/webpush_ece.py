"""Message encryption for Web Push (RFC 8291) in the ``aes128gcm`` content coding (RFC 8188).

A message is one record, encrypted for the browser's P-256 key ``p256dh`` and its 16-byte
``auth`` secret with a fresh key pair of the sender's and a fresh 16-byte salt::

    IKM   = HKDF(salt=auth, ikm=ECDH(sender, p256dh),
                 info="WebPush: info\\0" || p256dh || sender public key, 32)
    PRK   = HKDF-Extract(salt, IKM)
    CEK   = HKDF-Expand(PRK, "Content-Encoding: aes128gcm\\0", 16)
    NONCE = HKDF-Expand(PRK, "Content-Encoding: nonce\\0", 12)
    body  = salt || rs (uint32) || 65 || sender public key
            || AES-128-GCM(CEK, NONCE, message || 0x02)

:func:`encrypt` is what the provider sends; :func:`decrypt` is the browser's side, for the
stand-in and for tests. Both are built on ``cryptography`` alone: ``http_ece`` would add a
second implementation of the same 40 lines and no check we do not make here.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["RECORD_SIZE", "DecryptionError", "decrypt", "encrypt", "public_bytes"]

#: The record size written in the header: one record holds any message Web Push allows.
RECORD_SIZE: Final = 4096
_KEY_INFO: Final = b"WebPush: info\x00"
_CEK_INFO: Final = b"Content-Encoding: aes128gcm\x00"
_NONCE_INFO: Final = b"Content-Encoding: nonce\x00"
_HEADER: Final = struct.Struct("!16sIB")
_LAST_RECORD: Final = b"\x02"
_TAG: Final = 16


class DecryptionError(ValueError):
    """A body that does not decrypt with the browser's keys."""


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The uncompressed point (65 bytes) of a P-256 public key."""
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _keys(
    shared: bytes, auth: bytes, ua_public: bytes, as_public: bytes, salt: bytes
) -> tuple[bytes, bytes]:
    """The content encryption key and nonce (HKDF-SHA-256; each output fits one HMAC block)."""
    prk_key = _hmac(auth, shared)
    ikm = _hmac(prk_key, _KEY_INFO + ua_public + as_public + b"\x01")
    prk = _hmac(salt, ikm)
    return _hmac(prk, _CEK_INFO + b"\x01")[:16], _hmac(prk, _NONCE_INFO + b"\x01")[:12]


def encrypt(
    message: bytes,
    p256dh: bytes,
    auth: bytes,
    *,
    sender: ec.EllipticCurvePrivateKey | None = None,
    salt: bytes | None = None,
) -> bytes:
    """The ``aes128gcm`` body carrying ``message`` to the browser holding ``p256dh`` and
    ``auth``. ``sender`` and ``salt`` are fresh unless given (only tests give them)."""
    ua_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    sender = sender or ec.generate_private_key(ec.SECP256R1())
    salt = salt or os.urandom(16)
    as_public = public_bytes(sender.public_key())
    shared = sender.exchange(ec.ECDH(), ua_key)
    cek, nonce = _keys(shared, auth, p256dh, as_public, salt)
    record = AESGCM(cek).encrypt(nonce, message + _LAST_RECORD, None)
    return _HEADER.pack(salt, RECORD_SIZE, len(as_public)) + as_public + record


def decrypt(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth: bytes) -> bytes:
    """The message in an ``aes128gcm`` body, for the browser holding ``private_key`` and
    ``auth``; :class:`DecryptionError` when it is not one (one record, as Web Push sends)."""
    if len(body) < _HEADER.size:
        raise DecryptionError("shorter than the aes128gcm header")
    salt, record_size, id_length = _HEADER.unpack_from(body)
    start = _HEADER.size + id_length
    as_public, record = body[_HEADER.size : start], body[start:]
    if id_length != 65 or len(record) < _TAG + 1 or len(record) > record_size:
        raise DecryptionError("not a single aes128gcm record with a P-256 key id")
    try:
        as_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    except ValueError:
        raise DecryptionError("the key id is not a P-256 point") from None
    shared = private_key.exchange(ec.ECDH(), as_key)
    ua_public = public_bytes(private_key.public_key())
    cek, nonce = _keys(shared, auth, ua_public, as_public, salt)
    try:
        padded = AESGCM(cek).decrypt(nonce, record, None)
    except InvalidTag:
        raise DecryptionError("the record does not decrypt with these keys") from None
    message = padded.rstrip(b"\x00")
    if not message.endswith(_LAST_RECORD):
        raise DecryptionError("the record does not end with the last-record delimiter")
    return message[:-1]
