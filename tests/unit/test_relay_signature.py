"""The relay's Ed25519 signature on pushes: format, freshness, replay and every bad header."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relaypush.auth import RelaySignatureVerifier, make_relay_signature
from relaypush.domain.errors import FieldError, Unauthorized

RELAY_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUBLIC_HEX = RELAY_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
NOW = 1_700_000_000
BODY = b'{"id":"m1","payload":{"topic":"ab","flags":17,"blob":"x"}}'
SIG = "X-Ed25519-Signature"
TS = "X-Ed25519-Timestamp"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fx_clock() -> Clock:
    return Clock(NOW)


@pytest.fixture(name="verifier")
def fx_verifier(clock: Clock) -> RelaySignatureVerifier:
    return RelaySignatureVerifier(PUBLIC_HEX, max_age=300.0, clock=clock)


def refused(
    verifier: RelaySignatureVerifier, signature: str | None, timestamp: str | None, body: bytes
) -> tuple[FieldError, ...]:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(signature, timestamp, body)
    assert all(f.location == "header" and f.description for f in info.value.fields)
    return info.value.fields


def test_good_signature_is_accepted(verifier: RelaySignatureVerifier) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, BODY)
    verifier.verify(signature, timestamp, BODY)
    assert timestamp == str(NOW)
    assert len(bytes.fromhex(signature)) == 64


def test_signed_message_is_timestamp_length_and_raw_body(verifier: RelaySignatureVerifier) -> None:
    # Signed independently of make_relay_signature, exactly as the contract spells it.
    message = f"{NOW}.{len(BODY)}.".encode() + BODY
    verifier.verify(RELAY_KEY.sign(message).hex(), str(NOW), BODY)


def test_uppercase_hex_is_accepted(verifier: RelaySignatureVerifier) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, BODY)
    verifier.verify(signature.upper(), timestamp, BODY)


def test_empty_body_is_signed_too(verifier: RelaySignatureVerifier) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, b"")
    verifier.verify(signature, timestamp, b"")


GOOD_SIGNATURE, GOOD_TIMESTAMP = make_relay_signature(RELAY_KEY, NOW, BODY)


@pytest.mark.parametrize(
    ("signature", "timestamp", "fields"),
    [
        (None, GOOD_TIMESTAMP, (SIG,)),
        ("", GOOD_TIMESTAMP, (SIG,)),
        (GOOD_SIGNATURE, None, (TS,)),
        (GOOD_SIGNATURE, "", (TS,)),
        (None, None, (SIG, TS)),
        ("", "", (SIG, TS)),
    ],
)
def test_missing_headers_are_each_named(
    verifier: RelaySignatureVerifier,
    signature: str | None,
    timestamp: str | None,
    fields: tuple[str, ...],
) -> None:
    errors = refused(verifier, signature, timestamp, BODY)
    assert tuple(f.field for f in errors) == fields
    assert {f.description for f in errors} == {"header is required"}


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("zz" * 64, id="not-hex"),
        pytest.param("g" + GOOD_SIGNATURE[1:], id="one-non-hex-char"),
        pytest.param(GOOD_SIGNATURE[:-2], id="63-bytes"),
        pytest.param(GOOD_SIGNATURE + "00", id="65-bytes"),
        pytest.param(GOOD_SIGNATURE[:-1], id="odd-length"),
        pytest.param("00" * 32, id="32-bytes"),
        pytest.param("0x" + GOOD_SIGNATURE, id="0x-prefix"),
        pytest.param(GOOD_SIGNATURE[:64] + " " + GOOD_SIGNATURE[64:], id="inner-space"),
        pytest.param(" " + GOOD_SIGNATURE, id="leading-space"),
        pytest.param(GOOD_SIGNATURE + "\n", id="trailing-newline"),
        pytest.param("\u0660" * 128, id="unicode-digits"),
        pytest.param("a" * 10_000, id="huge"),
    ],
)
def test_malformed_signature_is_401(verifier: RelaySignatureVerifier, signature: str) -> None:
    (error,) = refused(verifier, signature, GOOD_TIMESTAMP, BODY)
    assert error.field == SIG
    assert "128 hexadecimal characters" in error.description


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "1.5",
        f"{NOW}.0",
        "-1",
        f" {NOW}",
        f"{NOW} ",
        "1e9",
        "+1700000000",
        "9" * 100,
        "\u0661",
    ],
)
def test_timestamp_that_is_not_an_integer_is_401(
    verifier: RelaySignatureVerifier, timestamp: str
) -> None:
    (error,) = refused(verifier, GOOD_SIGNATURE, timestamp, BODY)
    assert error.field == TS
    assert error.description == "must be an integer number of Unix seconds"


@pytest.mark.parametrize(
    ("offset", "word"),
    [(-301, "old"), (-3600, "old"), (-NOW, "old"), (301, "future"), (86_400, "future")],
)
def test_timestamp_outside_the_window_is_401(
    verifier: RelaySignatureVerifier, offset: int, word: str
) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW + offset, BODY)
    (error,) = refused(verifier, signature, timestamp, BODY)
    assert error.field == TS
    assert word in error.description


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_timestamp_inside_the_window_is_accepted(
    verifier: RelaySignatureVerifier, offset: int
) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW + offset, BODY)
    verifier.verify(signature, timestamp, BODY)


def test_replayed_signature_is_401(verifier: RelaySignatureVerifier, clock: Clock) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, BODY)
    verifier.verify(signature, timestamp, BODY)
    clock.now += 10
    (error,) = refused(verifier, signature, timestamp, BODY)
    assert error.field == SIG
    assert "replayed" in error.description
    # Changing the hex case does not make it new.
    refused(verifier, signature.upper(), timestamp, BODY)


def test_forgotten_signature_may_be_accepted_again(verifier: RelaySignatureVerifier) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, BODY)
    verifier.verify(signature, timestamp, BODY)
    verifier.forget(signature.upper())
    verifier.verify(signature, timestamp, BODY)
    refused(verifier, signature, timestamp, BODY)


def test_refused_signatures_are_not_remembered(verifier: RelaySignatureVerifier) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, BODY)
    refused(verifier, signature, timestamp, BODY + b" ")
    assert len(verifier) == 0
    verifier.verify(signature, timestamp, BODY)
    assert len(verifier) == 1


def test_memory_forgets_signatures_whose_window_has_closed(
    verifier: RelaySignatureVerifier, clock: Clock
) -> None:
    for i in range(50):
        body = f'{{"n":{i}}}'.encode()
        verifier.verify(*make_relay_signature(RELAY_KEY, int(clock.now), body), body)
        clock.now += 10
    # 50 accepted over 500 s: only those still inside the 300 s window are kept.
    assert len(verifier) <= 31
    clock.now += 301
    verifier.verify(*make_relay_signature(RELAY_KEY, int(clock.now), b"last"), b"last")
    assert len(verifier) == 1


@pytest.mark.parametrize(
    ("body", "signed_body"),
    [
        pytest.param(BODY.replace(b"17", b"16"), BODY, id="changed-flags"),
        pytest.param(BODY + b" ", BODY, id="appended-space"),
        pytest.param(BODY[:-1], BODY, id="truncated"),
        pytest.param(b"", BODY, id="emptied"),
        pytest.param(BODY, b"", id="signed-empty"),
    ],
)
def test_tampered_body_is_401(
    verifier: RelaySignatureVerifier, body: bytes, signed_body: bytes
) -> None:
    signature, timestamp = make_relay_signature(RELAY_KEY, NOW, signed_body)
    (error,) = refused(verifier, signature, timestamp, body)
    assert error.field == SIG
    assert "does not verify" in error.description


def test_changed_timestamp_is_401(verifier: RelaySignatureVerifier) -> None:
    signature, _ = make_relay_signature(RELAY_KEY, NOW, BODY)
    (error,) = refused(verifier, signature, str(NOW + 1), BODY)
    assert error.field == SIG


def test_signature_by_another_key_is_401(verifier: RelaySignatureVerifier) -> None:
    signature, timestamp = make_relay_signature(OTHER_KEY, NOW, BODY)
    (error,) = refused(verifier, signature, timestamp, BODY)
    assert error.field == SIG


def test_signature_over_the_body_alone_is_401(verifier: RelaySignatureVerifier) -> None:
    (error,) = refused(verifier, RELAY_KEY.sign(BODY).hex(), str(NOW), BODY)
    assert error.field == SIG


@pytest.mark.parametrize(
    "key",
    ["", "not hex", PUBLIC_HEX[:-2], PUBLIC_HEX + "00", PUBLIC_HEX[:-1], "zz" * 32],
)
def test_malformed_public_key_is_a_value_error(key: str) -> None:
    with pytest.raises(ValueError):
        RelaySignatureVerifier(key)


def test_public_key_may_be_uppercase_and_padded() -> None:
    verifier = RelaySignatureVerifier(f" {PUBLIC_HEX.upper()}\n", clock=lambda: NOW)
    verifier.verify(GOOD_SIGNATURE, GOOD_TIMESTAMP, BODY)


def test_max_age_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RelaySignatureVerifier(PUBLIC_HEX, max_age=0)
