"""Subject token encoding: exact round trips, and no token can change NATS routing."""

from __future__ import annotations

import re

import pytest

from eventstore import ANY, REST, InvalidSubject, Wildcard
from eventstore.subjects import (
    MAX_SUBJECT_LENGTH,
    decode_subject,
    decode_token,
    encode_filter,
    encode_subject,
    encode_token,
)

WIRE_TOKEN = re.compile(r"[A-Za-z0-9_=-]+")

TOKENS = [
    "plain",
    "with-dash_and_underscore",
    "0000",
    "a.b",
    ".",
    "*",
    ">",
    "a*b>c",
    "with space",
    "\t\r\n\x00",
    "=",
    "=2E",
    "==3D",
    "%2E",
    "ünïcødé",
    "钱包",
    "\U0001f680",
    "x" * 1000,
    "ab.* >é" * 100,
]


@pytest.mark.parametrize("token", TOKENS, ids=lambda t: repr(t)[:24])
def test_a_token_round_trips_and_encodes_to_one_literal_wire_token(token: str) -> None:
    wire = encode_token(token)
    assert WIRE_TOKEN.fullmatch(wire)
    assert decode_token(wire) == token


def test_safe_tokens_are_left_alone() -> None:
    assert encode_token("Client_42-a") == "Client_42-a"


def test_everything_else_is_escaped_as_upper_case_hex_of_utf8() -> None:
    assert encode_token("a.b") == "a=2Eb"
    assert encode_token("=") == "=3D"
    assert encode_token("é") == "=C3=A9"
    assert encode_token("*>") == "=2A=3E"


def test_distinct_tokens_never_share_an_encoding() -> None:
    encoded = [encode_token(t) for t in TOKENS]
    assert len(set(encoded)) == len(TOKENS)
    # The escape character is itself escaped, so text that looks encoded stays distinct.
    assert encode_token("=2E") != encode_token(".")


@pytest.mark.parametrize("token", TOKENS, ids=lambda t: repr(t)[:24])
def test_a_subject_keeps_one_wire_token_per_token(token: str) -> None:
    wire = encode_subject("app.events", ("tenant", token, "tail"))
    assert wire.startswith("app.events.")
    assert len(wire.split(".")) == 2 + 3
    assert decode_subject("app.events", wire) == ("tenant", token, "tail")


def test_filters_write_wildcards_and_escape_literal_wildcard_characters() -> None:
    assert encode_filter("p", ("a", ANY, "c")) == "p.a.*.c"
    assert encode_filter("p", ("a", REST)) == "p.a.>"
    assert encode_filter("p", (REST,)) == "p.>"
    assert encode_filter("p", ("*", ">")) == "p.=2A.=3E"


@pytest.mark.parametrize(
    "subject_filter",
    [(), (REST, "a"), ("a", REST, ANY), ("",), (Wildcard("?"),)],
    ids=repr,
)
def test_malformed_filters_are_refused(subject_filter: tuple[str | Wildcard, ...]) -> None:
    with pytest.raises(InvalidSubject):
        encode_filter("p", subject_filter)


@pytest.mark.parametrize("subject", [(), ("",), ("a", ""), ("\ud800",)], ids=repr)
def test_malformed_subjects_are_refused(subject: tuple[str, ...]) -> None:
    with pytest.raises(InvalidSubject):
        encode_subject("p", subject)


def test_subjects_longer_than_the_limit_are_refused() -> None:
    room = MAX_SUBJECT_LENGTH - len("p.")
    assert len(encode_subject("p", ("x" * room,))) == MAX_SUBJECT_LENGTH
    with pytest.raises(InvalidSubject):
        encode_subject("p", ("x" * (room + 1),))
    with pytest.raises(InvalidSubject):
        encode_subject("p", ("é" * 1000,))  # 6,000 characters once encoded
    with pytest.raises(InvalidSubject):
        encode_filter("p", ("x" * room, REST))


@pytest.mark.parametrize("wire", ["a.b", "=", "=2", "=2e", "=ZZ", "=C3", "a b", "é"], ids=repr)
def test_decoding_refuses_what_encoding_cannot_produce(wire: str) -> None:
    with pytest.raises(InvalidSubject):
        decode_token(wire)


def test_decoding_refuses_a_subject_under_another_prefix() -> None:
    with pytest.raises(InvalidSubject):
        decode_subject("app", "other.a")
    with pytest.raises(InvalidSubject):
        decode_subject("app", "application.a")
