"""Id validation: what client, tenant and message ids may hold (the contract's "Ids" section)."""

from __future__ import annotations

import pytest

from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.domain.ids import MAX_ID_BYTES, IdKind, validate_id

CLIENT_KEY = "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"

BAD_FOR_EVERY_KIND: list[object] = [
    None,
    42,
    ["abc"],
    "",
    "abc\n",
    "\x00",
    "a\x1fb",
    "a\x7fb",
    "a\x85b",  # NEL, a C1 control character
    "x" * 1000,
    "x" * 256,
    "é" * 128,  # 128 characters, 256 bytes
    "\ud800",  # a lone surrogate has no UTF-8
]

ORDINARY_IDS = [
    "wallet.1",
    "a.*",
    "a.>",
    "msg-ü-🔔",
    ">",
    "*",
    "a b",
    " abc",
    "caf\u00e9",
    "\u0661\u0662",
    "=2E",
    "a=b",
    "a:b",
    "x" * 255,
    "é" * 127 + "x",  # 255 bytes
    "🔔" * 63 + "abc",  # 255 bytes
]


@pytest.mark.parametrize("kind", ["client", "tenant", "message"])
@pytest.mark.parametrize("value", BAD_FOR_EVERY_KIND, ids=lambda v: repr(v)[:20])
def test_bad_id_names_the_field(kind: IdKind, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_id(value, field="client_id", location="path", kind=kind)
    assert len(info.value.fields) == 1
    error = info.value.fields[0]
    assert error.field == "client_id"
    assert error.location == "path"
    assert info.value.errors == ()


@pytest.mark.parametrize("kind", ["client", "message"])
@pytest.mark.parametrize("value", ORDINARY_IDS, ids=lambda v: repr(v)[:20])
def test_any_utf8_of_at_most_255_bytes_without_controls_is_an_id(kind: IdKind, value: str) -> None:
    assert len(value.encode()) <= MAX_ID_BYTES
    assert validate_id(value, field="id", location="body", kind=kind) == value


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("client", CLIENT_KEY, CLIENT_KEY),
        ("client", f"did:key:{CLIENT_KEY}", CLIENT_KEY),
        ("client", "did:key:wallet.1", "wallet.1"),
        ("client", "did:key:" + "x" * 255, "x" * 255),
        ("client", "abc_DEF-123", "abc_DEF-123"),
        ("tenant", "tenant-1_A", "tenant-1_A"),
        ("tenant", "x" * 255, "x" * 255),
        ("message", "0000-0000-0000-0000", "0000-0000-0000-0000"),
        ("message", "1700000000000:abc+/=", "1700000000000:abc+/="),
        ("message", "did:key:abc", "did:key:abc"),
    ],
)
def test_good_id_is_returned_normalised(kind: IdKind, value: str, expected: str) -> None:
    assert validate_id(value, field="id", location="body", kind=kind) == expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("client", "did:key:"),
        ("client", "a/b"),
        ("client", "/"),
        ("tenant", f"did:key:{CLIENT_KEY}"),
        ("tenant", "a+b"),
        ("tenant", "a.b"),
        ("tenant", "a b"),
        ("tenant", "caf\u00e9"),
        ("tenant", "\u0661\u0662"),
    ],
)
def test_what_only_some_kinds_refuse(kind: IdKind, value: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_id(value, field="id", location="body", kind=kind)


def test_a_message_id_may_hold_a_slash() -> None:
    assert validate_id("a/b", field="id", location="body", kind="message") == "a/b"


@pytest.mark.parametrize(
    ("kind", "value", "description"),
    [
        ("client", 7, "must be a string"),
        ("client", "", "must not be empty"),
        ("client", "did:key:", "must not be empty"),
        ("client", "a/b", "must not contain '/': a client id stands in URL paths"),
        ("message", "x" * 300, "must be at most 255 bytes of UTF-8, got 300 characters"),
        ("message", "é" * 200, "must be at most 255 bytes of UTF-8, got 400"),
        ("message", "ab\ncd", "must not contain control characters (U+000A at character 2)"),
        ("tenant", "a.b", "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-'"),
    ],
)
def test_description_says_what_is_wrong(kind: IdKind, value: object, description: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_id(value, field="client_id", location="body", kind=kind)
    assert info.value.fields == (FieldError("client_id", description, "body"),)


def test_unknown_location_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="location"):
        validate_id("abc", field="id", location="cookie", kind="tenant")
