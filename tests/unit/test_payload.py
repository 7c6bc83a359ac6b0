"""Register and push bodies: what is accepted, and the field named for every bad input."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.domain.events import NotifyMessage
from relaypush.domain.payload import (
    AUTH,
    CHAT,
    ENCRYPTED,
    NOTIFY,
    SIGN,
    LegacyPush,
    RawPush,
    RegisterRequest,
    flag_names,
    parse_push,
    parse_register,
)
from relaypush.domain.streams import dedup_key

CLIENT_KEY = "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
TOPIC = "a" * 64


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def notify_blob(**fields: object) -> str:
    return b64(json.dumps(fields).encode())


GOOD_BLOB = notify_blob(title="Hello", body="World")


def body_of(value: object) -> bytes:
    return json.dumps(value).encode()


def bad_fields(body: bytes, *, always_raw: bool = False) -> tuple[str, ...]:
    """The field names the push parser reports for ``body``."""
    with pytest.raises(InvalidRequest) as info:
        parse_push(body, always_raw=always_raw)
    assert all(f.location == "body" for f in info.value.fields)
    assert all(f.description for f in info.value.fields)
    return tuple(f.field for f in info.value.fields)


# -- flags -----------------------------------------------------------------------------------


def test_flag_constants_are_the_relay_bits() -> None:
    assert (ENCRYPTED, SIGN, AUTH, CHAT, NOTIFY) == (1, 2, 4, 8, 16)


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (0, ()),
        (1, ("encrypted",)),
        (2, ("sign",)),
        (4, ("auth",)),
        (8, ("chat",)),
        (16, ("notify",)),
        (17, ("encrypted", "notify")),
        (31, ("encrypted", "sign", "auth", "chat", "notify")),
        (32, ()),
        (1 << 20 | 2, ("sign",)),
        (2**32 - 1, ("encrypted", "sign", "auth", "chat", "notify")),
    ],
)
def test_flag_names(flags: int, names: tuple[str, ...]) -> None:
    assert flag_names(flags) == names


def test_negative_flags_have_no_names() -> None:
    with pytest.raises(ValueError):
        flag_names(-1)


# -- register --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"client_id": CLIENT_KEY, "type": "fcm", "token": "tok"},
            RegisterRequest(CLIENT_KEY, "fcm", "tok", always_raw=False),
        ),
        (
            {"client_id": f"did:key:{CLIENT_KEY}", "type": "APNS", "token": "tok"},
            RegisterRequest(CLIENT_KEY, "apns", "tok", always_raw=False),
        ),
        (
            {"client_id": "c", "type": "Apns-Sandbox", "token": "t", "always_raw": True},
            RegisterRequest("c", "apns-sandbox", "t", always_raw=True),
        ),
        (
            {"client_id": "c", "type": "noop", "token": "t", "always_raw": None},
            RegisterRequest("c", "noop", "t", always_raw=False),
        ),
        (
            {"client_id": "c", "type": "fcm", "token": "t", "always_raw": False, "extra": 1},
            RegisterRequest("c", "fcm", "t", always_raw=False),
        ),
        (
            {"client_id": "did:key:wallet.1", "type": "noop", "token": "t" * 512},
            RegisterRequest("wallet.1", "noop", "t" * 512, always_raw=False),
        ),
        (
            {"client_id": "a.>", "type": "fcm", "token": "\u00e9" * 256},
            RegisterRequest("a.>", "fcm", "\u00e9" * 256, always_raw=False),
        ),
        (
            {"client_id": "msg-\u00fc-\U0001f514", "type": "apns", "token": "t"},
            RegisterRequest("msg-\u00fc-\U0001f514", "apns", "t", always_raw=False),
        ),
    ],
)
def test_register_accepts(body: object, expected: RegisterRequest) -> None:
    assert parse_register(body_of(body)) == expected


GOOD_REGISTER = {"client_id": CLIENT_KEY, "type": "fcm", "token": "tok"}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"", ("body",)),
        (b"not json", ("body",)),
        (b'{"client_id": "c",', ("body",)),
        (b'{"client_id": "\xff", "type": "fcm", "token": "t"}', ("body",)),
        (b"[]", ("body",)),
        (b'"client"', ("body",)),
        (b"null", ("body",)),
        (b"{}", ("client_id", "type", "token")),
        (body_of({**GOOD_REGISTER, "client_id": ""}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": None}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": 12}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": "a/b"}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": "a\tb"}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": "\u0000"}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": "\u00e9" * 128}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": "x" * 1000}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "client_id": "did:key:"}), ("client_id",)),
        (body_of({**GOOD_REGISTER, "type": "gcm"}), ("type",)),
        (body_of({**GOOD_REGISTER, "type": ""}), ("type",)),
        (body_of({**GOOD_REGISTER, "type": 1}), ("type",)),
        (body_of({**GOOD_REGISTER, "type": ["fcm"]}), ("type",)),
        (body_of({k: v for k, v in GOOD_REGISTER.items() if k != "type"}), ("type",)),
        (body_of({**GOOD_REGISTER, "token": ""}), ("token",)),
        (body_of({**GOOD_REGISTER, "token": 5}), ("token",)),
        (body_of({**GOOD_REGISTER, "token": "t" * 513}), ("token",)),
        (body_of({**GOOD_REGISTER, "token": "\u00e9" * 257}), ("token",)),
        (body_of({k: v for k, v in GOOD_REGISTER.items() if k != "token"}), ("token",)),
        (body_of({**GOOD_REGISTER, "always_raw": "true"}), ("always_raw",)),
        (body_of({**GOOD_REGISTER, "always_raw": 1}), ("always_raw",)),
        (
            body_of({"client_id": "", "type": "gcm", "token": 3, "always_raw": "no"}),
            ("client_id", "type", "token", "always_raw"),
        ),
    ],
)
def test_register_refuses(body: bytes, fields: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_register(body)
    assert tuple(f.field for f in info.value.fields) == fields
    assert all(f.location == "body" and f.description for f in info.value.fields)


def test_unknown_type_lists_the_known_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_register(body_of({**GOOD_REGISTER, "type": "gcm"}))
    assert info.value.fields == (
        FieldError(
            "type",
            "unknown push type 'gcm'; expected one of apns, apns-sandbox, fcm, noop, webpush",
        ),
    )


# -- legacy pushes ---------------------------------------------------------------------------


def test_object_payload_with_cleartext_blob() -> None:
    blob = notify_blob(title="T", body="B", icon="https://i", url="https://u", type="t1")
    push = parse_push(
        body_of({"id": "m-1", "payload": {"topic": TOPIC, "flags": 16, "blob": blob}}),
        always_raw=False,
    )
    assert push == LegacyPush(
        message_id="m-1",
        topic=TOPIC,
        flags=16,
        blob=blob,
        encrypted=False,
        notify=NotifyMessage(title="T", body="B", icon="https://i", url="https://u", type="t1"),
    )


def test_string_payload_means_the_same_as_the_object() -> None:
    as_object = parse_push(
        body_of({"id": "m", "payload": {"topic": TOPIC, "flags": 16, "blob": GOOD_BLOB}}),
        always_raw=False,
    )
    as_string = parse_push(
        body_of({"id": "m", "payload": f"{TOPIC}:16:{GOOD_BLOB}"}), always_raw=False
    )
    assert as_string == as_object
    assert isinstance(as_string, LegacyPush)
    assert as_string.notify == NotifyMessage(title="Hello", body="World")


@pytest.mark.parametrize("blob", ["not base64 at all!", "eyJ0aXRsZSI6", "%%%", "AAAA" * 10])
def test_encrypted_blob_is_opaque_and_kept_byte_for_byte(blob: str) -> None:
    push = parse_push(
        body_of({"id": "m", "payload": {"topic": TOPIC, "flags": 17, "blob": blob}}),
        always_raw=False,
    )
    assert isinstance(push, LegacyPush)
    assert push.encrypted is True
    assert push.notify is None
    assert push.blob == blob
    assert push.flags == 17


def test_unknown_high_flag_bits_are_kept() -> None:
    flags = (1 << 31) | ENCRYPTED | NOTIFY
    push = parse_push(
        body_of({"id": "m", "payload": {"topic": TOPIC, "flags": flags, "blob": "x"}}),
        always_raw=False,
    )
    assert isinstance(push, LegacyPush)
    assert push.flags == flags
    assert flag_names(push.flags) == ("encrypted", "notify")


def test_null_optional_notify_fields_are_accepted() -> None:
    blob = notify_blob(title="T", body="B", icon=None, extra={"ignored": True})
    push = parse_push(body_of({"id": "m", "payload": f"t:0:{blob}"}), always_raw=False)
    assert isinstance(push, LegacyPush)
    assert push.notify == NotifyMessage(title="T", body="B")


def legacy(payload: object, message_id: object = "m-1") -> bytes:
    return body_of({"id": message_id, "payload": payload})


def obj(topic: object = TOPIC, flags: object = 16, blob: object = GOOD_BLOB) -> dict[str, object]:
    return {"topic": topic, "flags": flags, "blob": blob}


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        # not JSON, not an object
        (b"", ("body",)),
        (b"{", ("body",)),
        (b"payload=1", ("body",)),
        (b'{"id": "\xc3\x28"}', ("body",)),
        (b"[1, 2]", ("body",)),
        (b"17", ("body",)),
        # id
        (body_of({"payload": obj()}), ("id",)),
        (legacy(obj(), message_id=None), ("id",)),
        (legacy(obj(), message_id=""), ("id",)),
        (legacy(obj(), message_id=7), ("id",)),
        (legacy(obj(), message_id="a\nb"), ("id",)),
        (legacy(obj(), message_id="\u0000"), ("id",)),
        (legacy(obj(), message_id="\u2603" * 86), ("id",)),
        (legacy(obj(), message_id="1" * 1000), ("id",)),
        # payload itself
        (body_of({"id": "m"}), ("payload",)),
        (legacy(None), ("payload",)),
        (legacy(17), ("payload",)),
        (legacy([TOPIC, 16, GOOD_BLOB]), ("payload",)),
        (legacy(True), ("payload",)),
        # string form: exactly three parts
        (legacy(""), ("payload",)),
        (legacy(TOPIC), ("payload",)),
        (legacy(f"{TOPIC}:16"), ("payload",)),
        (legacy(f"{TOPIC}:16:{GOOD_BLOB}:x"), ("payload",)),
        (legacy(f"{TOPIC}:1:a:b:c"), ("payload",)),
        # string form: flags part
        (legacy(f"{TOPIC}:-1:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:1.5:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:abc:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}::{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}: 16:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:+16:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:0x10:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:\u0661\u0666:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:4294967296:{GOOD_BLOB}"), ("payload.flags",)),
        (legacy(f"{TOPIC}:{'9' * 5000}:{GOOD_BLOB}"), ("payload.flags",)),
        # string form: topic and blob parts
        (legacy(f":16:{GOOD_BLOB}"), ("payload.topic",)),
        (legacy(f"{TOPIC}:16:"), ("payload.blob",)),
        (legacy(f"{TOPIC}:17:"), ("payload.blob",)),
        (legacy("::"), ("payload.topic", "payload.flags", "payload.blob")),
        # object form: flags
        (legacy(obj(flags="17")), ("payload.flags",)),
        (legacy(obj(flags=-1)), ("payload.flags",)),
        (legacy(obj(flags=1.5)), ("payload.flags",)),
        (legacy(obj(flags=16.0)), ("payload.flags",)),
        (legacy(obj(flags=True)), ("payload.flags",)),
        (legacy(obj(flags=None)), ("payload.flags",)),
        (legacy(obj(flags=[16])), ("payload.flags",)),
        (legacy(obj(flags=2**32)), ("payload.flags",)),
        (legacy(obj(flags=10**30)), ("payload.flags",)),
        (legacy({"topic": TOPIC, "blob": GOOD_BLOB}), ("payload.flags",)),
        (b'{"id": "m", "payload": {"topic": "t", "flags": 1e400, "blob": "x"}}', ("body",)),
        # object form: topic
        (legacy(obj(topic="")), ("payload.topic",)),
        (legacy(obj(topic=None)), ("payload.topic",)),
        (legacy(obj(topic=5)), ("payload.topic",)),
        (legacy({"flags": 16, "blob": GOOD_BLOB}), ("payload.topic",)),
        # object form: blob presence and type
        (legacy(obj(blob="")), ("payload.blob",)),
        (legacy(obj(blob=None)), ("payload.blob",)),
        (legacy(obj(blob=12)), ("payload.blob",)),
        (legacy(obj(blob={"title": "t", "body": "b"})), ("payload.blob",)),
        (legacy({"topic": TOPIC, "flags": 16}), ("payload.blob",)),
        (legacy(obj(flags=17, blob="")), ("payload.blob",)),
        # every bad field at once
        (
            legacy(obj(topic="", flags="x", blob=""), message_id="a\x00b"),
            ("id", "payload.topic", "payload.flags", "payload.blob"),
        ),
        (
            legacy(obj(topic=None, blob="%%"), message_id=""),
            ("id", "payload.topic", "payload.blob"),
        ),
    ],
)
def test_legacy_push_refuses(body: bytes, fields: tuple[str, ...]) -> None:
    assert bad_fields(body) == fields


NOT_NOTIFY_BLOBS = [
    pytest.param("not base64!", id="not-base64"),
    pytest.param("eyJ0aXRsZSI6IkgifQ", id="missing-padding"),
    pytest.param("eyJ0aXRsZSI6IkgifQ=", id="short-padding"),
    pytest.param("=eyJ0aXRsZSI6IkgifQ=", id="leading-padding"),
    pytest.param(GOOD_BLOB + GOOD_BLOB, id="data-after-padding")
    if GOOD_BLOB.endswith("=")
    else pytest.param(GOOD_BLOB + "=", id="excess-padding"),
    pytest.param("YR==", id="non-canonical-bits"),
    pytest.param(GOOD_BLOB[:8] + "\n" + GOOD_BLOB[8:], id="embedded-newline"),
    pytest.param(GOOD_BLOB[:8] + " " + GOOD_BLOB[8:], id="embedded-space"),
    pytest.param(
        base64.urlsafe_b64encode(json.dumps({"title": "??>", "body": "??>"}).encode()).decode(),
        id="url-safe-alphabet",
    ),
    pytest.param("w6k=\u00e9", id="non-ascii"),
    pytest.param(b64(b"plain text, not json"), id="base64-of-text"),
    pytest.param(b64(b"\xff\xfe\x00"), id="base64-of-binary"),
    pytest.param(b64(b"   "), id="base64-of-whitespace"),
    pytest.param(b64(b"[]"), id="json-array"),
    pytest.param(b64(b'"Hello"'), id="json-string"),
    pytest.param(notify_blob(body="no title"), id="no-title"),
    pytest.param(notify_blob(title="no body"), id="no-body"),
    pytest.param(notify_blob(title=1, body="b"), id="title-not-string"),
    pytest.param(notify_blob(title="t", body=None), id="body-null"),
    pytest.param(notify_blob(title="t", body="b", icon=3), id="icon-not-string"),
    pytest.param(notify_blob(title="t", body="b", url=["u"]), id="url-not-string"),
    pytest.param(notify_blob(title="t", body="b", type=False), id="type-not-string"),
]


@pytest.mark.parametrize("blob", NOT_NOTIFY_BLOBS)
@pytest.mark.parametrize("form", ["object", "string"])
def test_cleartext_blob_must_be_base64_notify_json(blob: str, form: str) -> None:
    payload: object = obj(flags=16, blob=blob) if form == "object" else f"{TOPIC}:16:{blob}"
    with pytest.raises(InvalidRequest) as info:
        parse_push(legacy(payload), always_raw=False)
    (error,) = info.value.fields
    assert error.field == "payload.blob"
    assert error.description


@pytest.mark.parametrize(
    ("blob", "description"),
    [
        ("YQ", "is not valid standard base64: Incorrect padding"),
        (b64(b"hello"), "is base64 of something that is not JSON"),
        (notify_blob(body="b"), "is base64 of JSON that is not a Notify message"),
    ],
)
def test_blob_description_says_what_was_wrong(blob: str, description: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_push(legacy(obj(flags=0, blob=blob)), always_raw=False)
    assert info.value.fields[0].description.startswith(description)


def test_a_body_too_large_for_a_provider_is_still_a_valid_push() -> None:
    # The 4096-byte limit is the provider rule's business (provider_payload), not the parser's.
    blob = notify_blob(title="t" * 5000, body="b")
    push = parse_push(legacy(obj(flags=0, blob=blob)), always_raw=False)
    assert isinstance(push, LegacyPush)
    assert push.notify is not None
    assert len(push.notify.title) == 5000


# -- raw pushes ------------------------------------------------------------------------------


def test_raw_push_is_identified_by_the_sha256_of_its_message() -> None:
    message = "encrypted envelope \u2603"
    push = parse_push(body_of({"topic": TOPIC, "tag": 4002, "message": message}), always_raw=True)
    assert push == RawPush(
        message_id=hashlib.sha256(message.encode("utf-8")).hexdigest(),
        topic=TOPIC,
        tag=4002,
        message=message,
    )
    assert push.message_id == push.message_id.lower()
    assert len(push.message_id) == 64


def test_raw_dedup_key_is_per_client_and_per_message() -> None:
    a = parse_push(body_of({"topic": "t", "tag": 1, "message": "one"}), always_raw=True)
    b = parse_push(body_of({"topic": "u", "tag": 2, "message": "one"}), always_raw=True)
    c = parse_push(body_of({"topic": "t", "tag": 1, "message": "two"}), always_raw=True)
    assert a.message_id == b.message_id
    assert a.message_id != c.message_id
    assert dedup_key("t1", "c1", a.message_id) == dedup_key("t1", "c1", b.message_id)
    assert dedup_key("t1", "c1", a.message_id) != dedup_key("t1", "c2", a.message_id)
    assert dedup_key("t1", "c1", a.message_id) != dedup_key("t1", "c1", c.message_id)


def raw(topic: object = TOPIC, tag: object = 4002, message: object = "m") -> bytes:
    return body_of({"topic": topic, "tag": tag, "message": message})


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b"", ("body",)),
        (b"]", ("body",)),
        (b'"x"', ("body",)),
        (b"{}", ("topic", "tag", "message")),
        (raw(topic=""), ("topic",)),
        (raw(topic=1), ("topic",)),
        (raw(tag="4002"), ("tag",)),
        (raw(tag=True), ("tag",)),
        (raw(tag=-1), ("tag",)),
        (raw(tag=1.5), ("tag",)),
        (raw(tag=None), ("tag",)),
        (raw(tag=2**32), ("tag",)),
        (raw(message=""), ("message",)),
        (raw(message=None), ("message",)),
        (raw(message={"m": 1}), ("message",)),
        (raw(topic="", tag="x", message=""), ("topic", "tag", "message")),
        # a legacy body to a raw client names the legacy field
        (legacy(obj()), ("payload",)),
        (legacy(f"{TOPIC}:16:{GOOD_BLOB}"), ("payload",)),
    ],
)
def test_raw_push_refuses(body: bytes, fields: tuple[str, ...]) -> None:
    assert bad_fields(body, always_raw=True) == fields


@pytest.mark.parametrize(
    "body",
    [
        raw(),
        body_of({"topic": TOPIC, "message": "m"}),
        body_of({"id": "m", "message": "m"}),
    ],
)
def test_raw_body_to_a_legacy_client_names_message(body: bytes) -> None:
    assert bad_fields(body, always_raw=False) == ("message",)
