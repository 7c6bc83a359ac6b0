"""Id validation: what client, tenant and message ids may hold."""

from __future__ import annotations

import pytest

from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.domain.ids import IdKind, validate_id

CLIENT_KEY = "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"

BAD_FOR_EVERY_KIND: list[object] = [
    None,
    42,
    ["abc"],
    "",
    "a.b",
    "a*",
    ">",
    "a b",
    " abc",
    "abc\n",
    "caf\u00e9",
    "\u0661\u0662",  # Arabic-Indic digits: isdigit() but not ASCII
    "x" * 1000,
    "x" * 256,
]


@pytest.mark.parametrize("kind", ["client", "tenant", "message"])
@pytest.mark.parametrize("value", BAD_FOR_EVERY_KIND)
def test_bad_id_names_the_field(kind: IdKind, value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_id(value, field="client_id", location="path", kind=kind)
    assert len(info.value.fields) == 1
    error = info.value.fields[0]
    assert error.field == "client_id"
    assert error.location == "path"
    assert info.value.errors == ()


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("client", CLIENT_KEY, CLIENT_KEY),
        ("client", f"did:key:{CLIENT_KEY}", CLIENT_KEY),
        ("client", "abc_DEF-123", "abc_DEF-123"),
        ("client", "x" * 255, "x" * 255),
        ("tenant", "tenant-1_A", "tenant-1_A"),
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
        ("client", "a:b"),
        ("client", "a/b"),
        ("client", "a=b"),
        ("tenant", f"did:key:{CLIENT_KEY}"),
        ("tenant", "a+b"),
    ],
)
def test_characters_only_message_ids_allow(kind: IdKind, value: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_id(value, field="id", location="body", kind=kind)


@pytest.mark.parametrize(
    ("value", "description"),
    [
        (7, "must be a string"),
        ("", "must not be empty"),
        ("did:key:", "must not be empty"),
        (
            "a.b",
            "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-' "
            "(after an optional 'did:key:' prefix)",
        ),
    ],
)
def test_description_says_what_is_allowed(value: object, description: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_id(value, field="client_id", location="body", kind="client")
    assert info.value.fields == (FieldError("client_id", description, "body"),)


def test_unknown_location_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="location"):
        validate_id("abc", field="id", location="cookie", kind="tenant")
