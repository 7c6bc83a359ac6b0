"""The exact bodies APNs and FCM receive for an accepted notification.

APNs (encrypted, cleartext and raw shapes; keys in this order, compact JSON)::

    {"aps": {"alert": {"title": "You have new notifications. Open to view"},
             "content-available": 1, "mutable-content": 1}, "topic": T, "blob": B, "flags": F}
    {"aps": {"alert": {"title": title, "body": body},
             "content-available": 1, "mutable-content": 1}, "topic": T}
    {"aps": {...encrypted alert...}, "topic": T, "tag": TAG, "message": M}

FCM HTTP v1 (``data`` values are all strings; cleartext adds ``notification``)::

    {"message": {"token": TOKEN, "data": {"topic": T, "flags": "17", "blob": B},
                 "android": {"priority": "HIGH"},
                 "apns": {"payload": {"aps": {"content-available": 1}}}}}

Web Push (what the browser's service worker receives once the record is decrypted): the FCM
``data`` object, plus ``title``, ``body`` and, when present, ``icon``, ``url`` and ``type`` for a
cleartext Notify push::

    {"topic": T, "flags": "16", "blob": B, "title": "Hi", "body": "Hello"}

Every provider refuses payloads over 4096 bytes (for Web Push: the aes128gcm body, which adds
:data:`WEBPUSH_RECORD_OVERHEAD` bytes to the message); :func:`check_payload_size` refuses them at
acceptance time instead, so the relay learns of it (400) rather than the message failing later.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Final, NoReturn

import msgspec

from relaypush.domain.errors import ErrorInfo, FieldError, InvalidRequest
from relaypush.domain.events import NotificationAccepted, ProviderType

__all__ = [
    "APNS_ID_NAMESPACE",
    "ENCRYPTED_ALERT_TITLE",
    "MAX_PROVIDER_PAYLOAD",
    "WEBPUSH_RECORD_OVERHEAD",
    "apns_body",
    "apns_id",
    "check_payload_size",
    "fcm_data_size",
    "fcm_message",
    "webpush_message",
]

MAX_PROVIDER_PAYLOAD: Final = 4096
#: Bytes an aes128gcm body adds to a Web Push message: the header (16-byte salt, 4-byte record
#: size, 1-byte key id length, 65-byte key id), the padding delimiter and the 16-byte tag.
WEBPUSH_RECORD_OVERHEAD: Final = 16 + 4 + 1 + 65 + 1 + 16
ENCRYPTED_ALERT_TITLE: Final = "You have new notifications. Open to view"
#: Namespace of the uuid5 ``apns-id``s; fixed forever, so retries carry the same id.
APNS_ID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://relaypush.invalid/apns-id")
_NAMESPACE: Final = APNS_ID_NAMESPACE.bytes

_encode: Final = msgspec.json.encode
_ENCRYPTED_APS: Final[dict[str, object]] = {
    "alert": {"title": ENCRYPTED_ALERT_TITLE},
    "content-available": 1,
    "mutable-content": 1,
}
_FCM_ANDROID: Final[dict[str, object]] = {"priority": "HIGH"}
_FCM_APNS: Final[dict[str, object]] = {"payload": {"aps": {"content-available": 1}}}


def apns_body(n: NotificationAccepted) -> bytes:
    """The APNs request body for ``n``: raw, cleartext or encrypted shape, compact JSON."""
    if n.raw is not None:
        return _encode(
            {
                "aps": _ENCRYPTED_APS,
                "topic": n.raw.topic,
                "tag": n.raw.tag,
                "message": n.raw.message,
            }
        )
    if n.notify is not None and not n.encrypted:
        aps = {
            "alert": {"title": n.notify.title, "body": n.notify.body},
            "content-available": 1,
            "mutable-content": 1,
        }
        return _encode({"aps": aps, "topic": n.topic})
    return _encode({"aps": _ENCRYPTED_APS, "topic": n.topic, "blob": _blob(n), "flags": n.flags})


def apns_id(tenant_id: str, client_id: str, message_id: str) -> str:
    """The ``apns-id`` of a notification: a uuid5 of (tenant, client, message id).

    The same on every retry, and different for one message id sent to two clients.
    """
    name = "\x00".join((tenant_id, client_id, message_id))
    # uuid.uuid5(APNS_ID_NAMESPACE, name) spelled out: a tenth of an APNs send's CPU otherwise
    digest = bytearray(hashlib.sha1(_NAMESPACE + name.encode()).digest()[:16])  # noqa: S324
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _blob(n: NotificationAccepted) -> str:
    if n.blob is None:
        raise ValueError(f"notification {n.message_id!r} has neither a blob nor a raw message")
    return n.blob


def _data(n: NotificationAccepted) -> dict[str, str]:
    """FCM's ``data`` object: every value a string."""
    if n.raw is not None:
        return {"topic": n.raw.topic, "tag": str(n.raw.tag), "message": n.raw.message}
    return {"topic": n.topic, "flags": str(n.flags), "blob": _blob(n)}


def _fcm_fields(n: NotificationAccepted) -> dict[str, object]:
    """The FCM ``message`` object without its ``token``."""
    fields: dict[str, object] = {"data": _data(n), "android": _FCM_ANDROID, "apns": _FCM_APNS}
    if n.raw is None and n.notify is not None and not n.encrypted:
        fields["notification"] = {"title": n.notify.title, "body": n.notify.body}
    return fields


def fcm_message(n: NotificationAccepted, token: str) -> dict[str, object]:
    """The FCM HTTP v1 ``messages:send`` document for ``n`` sent to device ``token``."""
    return {"message": {"token": token, **_fcm_fields(n)}}


def fcm_data_size(n: NotificationAccepted) -> int:
    """Bytes of the FCM ``message`` object for ``n`` without its token, as compact JSON."""
    return len(_encode(_fcm_fields(n)))


def webpush_message(n: NotificationAccepted) -> bytes:
    """The JSON a Web Push client's service worker receives for ``n`` (before encryption)."""
    message: dict[str, str] = _data(n)
    notify = n.notify
    if n.raw is None and notify is not None and not n.encrypted:
        message["title"], message["body"] = notify.title, notify.body
        for name, value in (("icon", notify.icon), ("url", notify.url), ("type", notify.type)):
            if value is not None:
                message[name] = value
    return _encode(message)


def check_payload_size(n: NotificationAccepted, provider: ProviderType) -> None:
    """Refuse ``n`` when the body ``provider`` would receive exceeds 4096 bytes.

    APNs (and noop) measure the APNs body; FCM measures the message without the device token;
    Web Push measures the encrypted record (the message and :data:`WEBPUSH_RECORD_OVERHEAD`).
    All are measured as the providers' clients encode them (compact JSON, UTF-8, escapes
    included), so whatever makes up the size, nothing larger reaches a provider. A cleartext
    blob is bounded by the limit too, whatever the client's provider: FCM carries it whole, and
    the notification goes to the provider the client is registered with when it is sent.
    Raises ``InvalidRequest`` with error ``payload_too_large`` and a field naming the payload
    (``payload`` for legacy pushes, ``payload.blob`` for a cleartext blob, ``message`` for raw
    ones).
    """
    if n.raw is None and n.notify is not None and not n.encrypted:
        blob = len(_blob(n).encode())
        if blob > MAX_PROVIDER_PAYLOAD:
            _too_large(f"the cleartext blob is {blob} bytes", "payload.blob")
    if provider == "fcm":
        size = fcm_data_size(n)
    elif provider == "webpush":
        size = len(webpush_message(n)) + WEBPUSH_RECORD_OVERHEAD
    else:
        size = len(apns_body(n))
    if size > MAX_PROVIDER_PAYLOAD:
        _too_large(
            f"the {provider} payload would be {size} bytes",
            "message" if n.raw is not None else "payload",
        )


def _too_large(what: str, field: str) -> NoReturn:
    what += f", over the limit of {MAX_PROVIDER_PAYLOAD} bytes"
    raise InvalidRequest(
        fields=(FieldError(field, what),), errors=(ErrorInfo("payload_too_large", what),)
    )
