"""Personal fields: what erasing a client makes unreadable, taken out of events and put back.

Two events carry personal data: ``client.registered`` (the device token) and
``notification.accepted`` (a cleartext blob, the Notify message decoded from it, the message of
a raw push). Before such an event is appended its personal fields are taken out
(:func:`personal_fields`), encrypted under the client's key by ``relaypush.privacy`` and stored
in the event's ``sealed`` field (:func:`sealed_event`), the plaintext fields emptied. Readers put
them back (:func:`opened_event`) while the key exists. An encrypted blob is a ciphertext only
the wallet can read: it is left as it is.

Everything else (ids, provider, topic, flags, a raw push's topic and tag, times, outcomes) stays
readable, so the history still tells what happened. Pure: standard library and msgspec only.
"""

from __future__ import annotations

from typing import TypeVar, assert_never

import msgspec

from relaypush.domain.events import (
    ClientRegistered,
    Event,
    NotificationAccepted,
    NotifyMessage,
    SealedFields,
)

__all__ = [
    "PersonalFields",
    "SealableEvent",
    "decode_personal",
    "encode_personal",
    "opened_event",
    "personal_fields",
    "sealed_event",
    "sealed_of",
]

SealableEvent = ClientRegistered | NotificationAccepted
"""The events that can carry personal fields."""

E = TypeVar("E", ClientRegistered, NotificationAccepted)


class PersonalFields(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The personal fields of one event, as they are encrypted (compact JSON)."""

    token: str | None = None
    blob: str | None = None
    notify: NotifyMessage | None = None
    raw_message: str | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PersonalFields).decode


def encode_personal(fields: PersonalFields) -> bytes:
    return _encode(fields)


def decode_personal(data: bytes) -> PersonalFields:
    """Raises ``msgspec.DecodeError`` for bytes :func:`encode_personal` did not make."""
    return _decode(data)


def personal_fields(event: SealableEvent) -> PersonalFields | None:
    """The personal fields of a plaintext event; None when it has none to seal (an encrypted
    push, or an event sealed already)."""
    if event.sealed is not None:
        return None
    match event:
        case ClientRegistered():
            return PersonalFields(token=event.token)
        case NotificationAccepted():
            fields = PersonalFields(
                blob=None if event.encrypted else event.blob,
                notify=event.notify,
                raw_message=event.raw.message if event.raw is not None else None,
            )
            return None if fields == _NOTHING else fields
        case _:
            assert_never(event)


_NOTHING = PersonalFields()


def sealed_event(event: E, sealed: SealedFields) -> E:
    """``event`` with its personal fields emptied and ``sealed`` (which holds them) attached."""
    match event:
        case ClientRegistered():
            return msgspec.structs.replace(event, token="", sealed=sealed)
        case NotificationAccepted():
            return msgspec.structs.replace(
                event,
                blob=event.blob if event.encrypted else None,
                notify=None,
                raw=msgspec.structs.replace(event.raw, message="") if event.raw else None,
                sealed=sealed,
            )
        case _:
            assert_never(event)


def opened_event(event: E, fields: PersonalFields) -> E:
    """A sealed ``event`` with its personal ``fields`` put back and ``sealed`` cleared: the
    event as it was before :func:`sealed_event`."""
    match event:
        case ClientRegistered():
            return msgspec.structs.replace(event, token=fields.token or "", sealed=None)
        case NotificationAccepted():
            raw = event.raw
            if raw is not None and fields.raw_message is not None:
                raw = msgspec.structs.replace(raw, message=fields.raw_message)
            return msgspec.structs.replace(
                event,
                blob=fields.blob if fields.blob is not None else event.blob,
                notify=fields.notify,
                raw=raw,
                sealed=None,
            )
        case _:
            assert_never(event)


def sealed_of(event: Event) -> SealedFields | None:
    """The sealed personal fields an event still carries: set on an event that was sealed and
    could not be opened (its client was erased), None on any other."""
    if isinstance(event, ClientRegistered | NotificationAccepted):
        return event.sealed
    return None
