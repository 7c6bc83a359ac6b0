"""Decoding of register and push bodies into values the domain can decide on.

Every function here validates by hand after one ``msgspec.json.decode`` to plain Python values,
so that each bad field is named exactly as the client wrote it (``payload.flags``,
``payload.blob``, ...) and every bad field is reported at once, not just the first.

Legacy pushes: ``{"id", "payload": {"topic", "flags", "blob"}}`` or the seed's string form
``{"id", "payload": "topic:flags:blob"}``. Raw pushes (``always_raw`` clients):
``{"topic", "tag", "message"}``, identified by the SHA-256 of ``message``.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.domain.events import NotifyMessage, ProviderType
from relaypush.domain.ids import id_problem
from relaypush.domain.webpush import MAX_SUBSCRIPTION_LENGTH
from relaypush.domain.webpush import token_problems as webpush_token_problems

__all__ = [
    "AUTH",
    "CHAT",
    "DEFAULT_MAX_TOKEN_BYTES",
    "ENCRYPTED",
    "MAX_FLAGS",
    "MAX_TAG",
    "MAX_TOKEN_BYTES",
    "NOTIFY",
    "PROVIDER_TYPES",
    "SIGN",
    "TOO_DEEP",
    "LegacyPush",
    "RawPush",
    "RegisterRequest",
    "decode_notify_blob",
    "decode_object",
    "flag_names",
    "max_token_bytes",
    "parse_push",
    "parse_register",
    "peek_object",
    "raw_message_id",
]

ENCRYPTED: Final = 1 << 0
SIGN: Final = 1 << 1
AUTH: Final = 1 << 2
CHAT: Final = 1 << 3
NOTIFY: Final = 1 << 4

#: The relay's flags are a u32; anything larger is refused.
MAX_FLAGS: Final = 2**32 - 1
#: The relay's raw tags are a u32 as well.
MAX_TAG: Final = 2**32 - 1
#: Longest device token, in bytes of UTF-8, for a type :data:`MAX_TOKEN_BYTES` does not list.
#: APNs tokens are 64 hex digits and FCM tokens about 160 characters.
DEFAULT_MAX_TOKEN_BYTES: Final = 512
#: Longest device token per client type, where it differs from the default.
MAX_TOKEN_BYTES: Final[dict[str, int]] = {"webpush": MAX_SUBSCRIPTION_LENGTH}

PROVIDER_TYPES: Final[dict[str, ProviderType]] = {
    "apns": "apns",
    "apns-sandbox": "apns-sandbox",
    "fcm": "fcm",
    "noop": "noop",
    "webpush": "webpush",
}

_KNOWN_FLAGS: Final = (
    (ENCRYPTED, "encrypted"),
    (SIGN, "sign"),
    (AUTH, "auth"),
    (CHAT, "chat"),
    (NOTIFY, "notify"),
)
_KNOWN_MASK: Final = ENCRYPTED | SIGN | AUTH | CHAT | NOTIFY
# Every combination of the known bits, precomputed: flag_names is a table lookup.
_NAMES_BY_BITS: Final = tuple(
    tuple(name for bit, name in _KNOWN_FLAGS if bits & bit) for bits in range(_KNOWN_MASK + 1)
)


def max_token_bytes(provider: str | None) -> int:
    """The longest device token, in bytes of UTF-8, that a client of type ``provider`` may have."""
    if provider is None:
        return DEFAULT_MAX_TOKEN_BYTES
    return MAX_TOKEN_BYTES.get(provider, DEFAULT_MAX_TOKEN_BYTES)


def flag_names(flags: int) -> tuple[str, ...]:
    """Names of the known bits set in ``flags``, in bit order; unknown higher bits are unnamed."""
    if flags < 0:
        raise ValueError("flags must not be negative")
    return _NAMES_BY_BITS[flags & _KNOWN_MASK]


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """A valid ``POST /clients`` body; ``client_id`` has its ``did:key:`` prefix stripped."""

    client_id: str
    provider: ProviderType
    token: str
    always_raw: bool


@dataclass(frozen=True, slots=True)
class LegacyPush:
    """A valid legacy push; ``notify`` is the decoded blob when it is cleartext."""

    message_id: str
    topic: str
    flags: int
    blob: str
    encrypted: bool
    notify: NotifyMessage | None


@dataclass(frozen=True, slots=True)
class RawPush:
    """A valid push to an ``always_raw`` client; ``message_id`` is the SHA-256 of ``message``."""

    message_id: str
    topic: str
    tag: int
    message: str


_decode_json: Final = msgspec.json.decode
_notify_decoder: Final = msgspec.json.Decoder(NotifyMessage)

#: Why JSON nested deeper than the decoder's recursion limit (under 1,000 levels) is refused.
TOO_DEEP: Final = "is JSON nested too deeply (arrays or objects inside each other)"

_MISSING: Final = object()
_REQUIRED: Final = "is required"
_NOT_STRING: Final = "must be a string"
_EMPTY: Final = "must not be empty"
_NOT_UINT: Final = "must be a non-negative integer"


def peek_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object, or None when it is not one (for reading a member before the
    request is authenticated: the shape is refused later, naming the field)."""
    try:
        value = _decode_json(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def decode_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object, or ``InvalidRequest`` naming ``body`` (malformed JSON, invalid
    UTF-8, nesting too deep for the decoder, or JSON that is not an object)."""
    try:
        value = _decode_json(body)
    except (msgspec.MsgspecError, ValueError) as exc:
        # ValueError: msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError.
        raise InvalidRequest(fields=(FieldError("body", f"is not valid JSON: {exc}"),)) from exc
    except RecursionError:
        raise InvalidRequest(fields=(FieldError("body", TOO_DEEP),)) from None
    if not isinstance(value, dict):
        raise InvalidRequest(fields=(FieldError("body", "must be a JSON object"),))
    return value


def _string(obj: dict[str, Any], key: str, field: str, problems: list[FieldError]) -> str | None:
    """A required, non-empty string member; records a problem and returns None otherwise."""
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        problems.append(FieldError(field, _REQUIRED))
    elif not isinstance(value, str):
        problems.append(FieldError(field, _NOT_STRING))
    elif not value:
        problems.append(FieldError(field, _EMPTY))
    else:
        return value
    return None


def _uint(value: object, field: str, maximum: int, problems: list[FieldError]) -> int | None:
    """A non-negative JSON integer (not a boolean, float or string) up to ``maximum``."""
    if value is _MISSING or value is None:
        problems.append(FieldError(field, _REQUIRED))
    elif type(value) is not int:
        problems.append(FieldError(field, f"{_NOT_UINT}, got {_json_type(value)}"))
    elif value < 0:
        problems.append(FieldError(field, _NOT_UINT))
    elif value > maximum:
        problems.append(FieldError(field, f"must be at most {maximum}"))
    else:
        return value
    return None


def _names(problems: list[FieldError], field: str) -> bool:
    return any(p.field == field for p in problems)


def _json_type(value: object) -> str:
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a number with a fraction or exponent"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
        case _:
            return "null"


def _excerpt(text: str, limit: int = 40) -> str:
    """``text`` quoted and cut short, for echoing client input in a description."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_register(body: bytes, *, webpush_hosts: Iterable[str] = ()) -> RegisterRequest:
    """Decode a ``POST /clients`` body: ``{"client_id", "type", "token", "always_raw"?}``.

    A ``webpush`` token must be a subscription whose endpoint is on ``webpush_hosts``
    (:mod:`relaypush.domain.webpush`). Raises ``InvalidRequest`` with one ``FieldError`` per
    bad field.
    """
    obj = decode_object(body)
    problems: list[FieldError] = []

    client_id: str | None = None
    raw_id = obj.get("client_id", _MISSING)
    if raw_id is _MISSING or raw_id is None:
        problems.append(FieldError("client_id", _REQUIRED))
    else:
        client_id, why = id_problem(raw_id, "client")
        if why is not None:
            problems.append(FieldError("client_id", why))

    provider: ProviderType | None = None
    type_ = _string(obj, "type", "type", problems)
    if type_ is not None:
        provider = PROVIDER_TYPES.get(type_.lower())
        if provider is None:
            problems.append(
                FieldError(
                    "type",
                    f"unknown push type {_excerpt(type_)}; expected one of "
                    + ", ".join(PROVIDER_TYPES),
                )
            )

    token = _string(obj, "token", "token", problems)
    limit = max_token_bytes(provider)
    if token is not None and (len(token) > limit or len(token.encode()) > limit):
        problems.append(FieldError("token", f"must be at most {limit} bytes of UTF-8"))

    always_raw = obj.get("always_raw", False)
    if always_raw is None:
        always_raw = False
    elif not isinstance(always_raw, bool):
        problems.append(FieldError("always_raw", "must be a boolean"))

    if provider == "webpush" and token is not None and not _names(problems, "token"):
        problems += webpush_token_problems(token, hosts=webpush_hosts)

    if problems:
        raise InvalidRequest(fields=problems)
    assert client_id is not None
    assert provider is not None
    assert token is not None
    return RegisterRequest(
        client_id=client_id, provider=provider, token=token, always_raw=always_raw is True
    )


def parse_push(body: bytes, *, always_raw: bool) -> LegacyPush | RawPush:
    """Decode a push body for a legacy client, or for a raw client when ``always_raw``.

    A legacy body (one with ``payload``) sent to a raw client, or a raw body (``message`` and no
    ``payload``) sent to a legacy client, is refused naming that field. Raises
    ``InvalidRequest`` with one ``FieldError`` per bad field.
    """
    obj = decode_object(body)
    if always_raw:
        if "payload" in obj:
            raise InvalidRequest(
                fields=(
                    FieldError(
                        "payload",
                        "this client takes raw pushes (always_raw): expected "
                        '{"topic", "tag", "message"}, not a legacy payload',
                    ),
                )
            )
        return _parse_raw(obj)
    if "payload" not in obj and "message" in obj:
        raise InvalidRequest(
            fields=(
                FieldError(
                    "message",
                    "this client takes legacy pushes: expected "
                    '{"id", "payload"}, not a raw message',
                ),
            )
        )
    return _parse_legacy(obj)


def _parse_raw(obj: dict[str, Any]) -> RawPush:
    problems: list[FieldError] = []
    topic = _string(obj, "topic", "topic", problems)
    tag = _uint(obj.get("tag", _MISSING), "tag", MAX_TAG, problems)
    message = _string(obj, "message", "message", problems)
    if problems:
        raise InvalidRequest(fields=problems)
    assert topic is not None
    assert tag is not None
    assert message is not None
    return RawPush(message_id=raw_message_id(message), topic=topic, tag=tag, message=message)


def raw_message_id(message: str) -> str:
    """The message id of a raw push: lowercase hex SHA-256 of ``message`` in UTF-8."""
    return hashlib.sha256(message.encode()).hexdigest()


def _parse_legacy(obj: dict[str, Any]) -> LegacyPush:
    problems: list[FieldError] = []

    message_id: str | None = None
    raw_id = obj.get("id", _MISSING)
    if raw_id is _MISSING or raw_id is None:
        problems.append(FieldError("id", _REQUIRED))
    else:
        message_id, why = id_problem(raw_id, "message")
        if why is not None:
            problems.append(FieldError("id", why))

    topic: str | None = None
    flags: int | None = None
    blob: str | None = None
    payload = obj.get("payload", _MISSING)
    if payload is _MISSING or payload is None:
        problems.append(FieldError("payload", _REQUIRED))
    elif isinstance(payload, str):
        topic, flags, blob = _split_payload(payload, problems)
    elif isinstance(payload, dict):
        topic = _string(payload, "topic", "payload.topic", problems)
        flags = _uint(payload.get("flags", _MISSING), "payload.flags", MAX_FLAGS, problems)
        blob = _string(payload, "blob", "payload.blob", problems)
    else:
        problems.append(
            FieldError(
                "payload",
                'must be an object {"topic", "flags", "blob"} or a "topic:flags:blob" string',
            )
        )

    notify: NotifyMessage | None = None
    encrypted = flags is not None and bool(flags & ENCRYPTED)
    if blob is not None and flags is not None and not encrypted:
        notify, why = decode_notify_blob(blob)
        if why is not None:
            problems.append(FieldError("payload.blob", why))

    if problems:
        raise InvalidRequest(fields=problems)
    assert message_id is not None
    assert topic is not None
    assert flags is not None
    assert blob is not None
    return LegacyPush(
        message_id=message_id,
        topic=topic,
        flags=flags,
        blob=blob,
        encrypted=encrypted,
        notify=notify,
    )


def _split_payload(
    payload: str, problems: list[FieldError]
) -> tuple[str | None, int | None, str | None]:
    """The seed's ``"topic:flags:blob"`` form, split on ``:`` into exactly three parts."""
    parts = payload.split(":")
    if len(parts) != 3:
        problems.append(
            FieldError(
                "payload",
                f"must be \"topic:flags:blob\" (three parts separated by ':'), "
                f"got {len(parts)} part{'s' if len(parts) != 1 else ''}",
            )
        )
        return None, None, None
    topic_part, flags_part, blob_part = parts
    topic: str | None = topic_part
    if not topic_part:
        problems.append(FieldError("payload.topic", _EMPTY))
        topic = None
    flags: int | None = None
    if (
        flags_part.isascii()
        and flags_part.isdigit()
        and len(flags_part) <= len(str(MAX_FLAGS))
        and int(flags_part) <= MAX_FLAGS
    ):
        flags = int(flags_part)
    else:
        problems.append(
            FieldError(
                "payload.flags",
                f"must be a non-negative decimal integer up to {MAX_FLAGS}, "
                f"got {_excerpt(flags_part)}",
            )
        )
    blob: str | None = blob_part
    if not blob_part:
        problems.append(FieldError("payload.blob", _EMPTY))
        blob = None
    return topic, flags, blob


def decode_notify_blob(blob: str) -> tuple[NotifyMessage, None] | tuple[None, str]:
    """``(message, None)`` for a cleartext blob, else ``(None, what was wrong)``.

    The blob must be standard-alphabet base64 with correct padding (and canonical: the unused
    low bits of the last character are zero) of a JSON Notify message with string ``title`` and
    ``body`` and optional string ``icon``, ``url``, ``type``.
    """
    if not blob.isascii():
        return None, "must be standard base64 (A-Z, a-z, 0-9, '+', '/', '=' padding)"
    data = blob.encode("ascii")
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        return None, f"is not valid standard base64: {exc}"
    if binascii.b2a_base64(decoded, newline=False) != data:
        return None, "is not canonical base64: the unused bits of the last character must be 0"
    try:
        message = _notify_decoder.decode(decoded)
    except msgspec.ValidationError as exc:
        return None, f"is base64 of JSON that is not a Notify message: {exc}"
    except (msgspec.MsgspecError, ValueError) as exc:
        return None, f"is base64 of something that is not JSON: {exc}"
    except RecursionError:
        return None, f"is base64 of {TOO_DEEP.removeprefix('is ')}"
    return message, None
