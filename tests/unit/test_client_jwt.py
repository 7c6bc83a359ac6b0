"""The wallet's relay JWT: did:key encoding, and every way a token is refused."""

from __future__ import annotations

import base64
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relaypush.auth import (
    did_key_to_ed25519,
    ed25519_to_did_key,
    make_client_jwt,
    verify_client_jwt,
)
from relaypush.auth.client_jwt import b58decode, b58encode
from relaypush.domain.errors import Unauthorized

WALLET_KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
# The W3C did:key test vector for the Ed25519 key of the all-zero seed.
WALLET_PUB_HEX = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
WALLET_DID = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
CLIENT_ID = WALLET_DID.removeprefix("did:key:")
AUDIENCE = "https://push.example.com"
NOW = 1_700_000_000.0


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(
    header: object = None,
    claims: object = None,
    *,
    key: Ed25519PrivateKey = WALLET_KEY,
) -> str:
    """A token with any header and claims, signed by ``key``."""
    if header is None:
        header = {"alg": "EdDSA", "typ": "JWT"}
    if claims is None:
        claims = {"iss": WALLET_DID, "aud": AUDIENCE, "iat": NOW}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def claims(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {"iss": WALLET_DID, "aud": AUDIENCE, "iat": NOW}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def verify(token: str, client_id: str = CLIENT_ID) -> None:
    verify_client_jwt(token, client_id=client_id, audience=AUDIENCE, now=NOW)


def refusal(token: str, client_id: str = CLIENT_ID) -> str:
    with pytest.raises(Unauthorized) as info:
        verify(token, client_id)
    (error,) = info.value.fields
    assert error.field == "Authorization"
    assert error.location == "header"
    assert info.value.errors == ()
    return error.description


# -- did:key ---------------------------------------------------------------------------------


def test_did_key_matches_the_w3c_vector() -> None:
    assert raw_public(WALLET_KEY).hex() == WALLET_PUB_HEX
    assert ed25519_to_did_key(bytes.fromhex(WALLET_PUB_HEX)) == WALLET_DID
    decoded = did_key_to_ed25519(WALLET_DID)
    assert decoded.public_bytes(Encoding.Raw, PublicFormat.Raw).hex() == WALLET_PUB_HEX


@pytest.mark.parametrize("seed", [bytes(32), bytes(range(32)), b"\xff" * 32])
def test_did_key_round_trip(seed: bytes) -> None:
    pub = raw_public(Ed25519PrivateKey.from_private_bytes(seed))
    did = ed25519_to_did_key(pub)
    assert did.startswith("did:key:z6Mk")
    assert did_key_to_ed25519(did).public_bytes(Encoding.Raw, PublicFormat.Raw) == pub


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"", ""),
        (b"\x00", "1"),
        (b"\x00\x00\x01", "112"),
        (b"hello world", "StV1DL6CwTryKyV"),
        (bytes.fromhex("ed01" + WALLET_PUB_HEX), CLIENT_ID[1:]),
    ],
)
def test_base58btc(data: bytes, text: str) -> None:
    assert b58encode(data) == text
    assert b58decode(text) == data


@pytest.mark.parametrize("text", ["0", "O", "I", "l", "abc+", " 1", "\u00e9"])
def test_base58btc_refuses_characters_outside_the_alphabet(text: str) -> None:
    with pytest.raises(ValueError):
        b58decode(text)


@pytest.mark.parametrize(
    "did",
    [
        pytest.param("", id="empty"),
        pytest.param(CLIENT_ID, id="no-prefix"),
        pytest.param("did:key:" + CLIENT_ID[1:], id="no-multibase-z"),
        pytest.param("did:web:" + CLIENT_ID, id="did-web"),
        pytest.param("did:key:z" + b58encode(b"\xe7\x01" + bytes(33)), id="secp256k1"),
        pytest.param("did:key:z" + b58encode(b"\xed\x01" + bytes(31)), id="short-key"),
        pytest.param("did:key:z" + b58encode(b"\xed\x01" + bytes(33)), id="long-key"),
        pytest.param(WALLET_DID + "0", id="bad-character"),
        pytest.param("did:key:z" + "z" * 5000, id="huge"),
    ],
)
def test_malformed_did_key_is_a_value_error(did: str) -> None:
    with pytest.raises(ValueError):
        did_key_to_ed25519(did)


def test_ed25519_to_did_key_wants_32_bytes() -> None:
    with pytest.raises(ValueError):
        ed25519_to_did_key(bytes(31))


# -- good tokens -----------------------------------------------------------------------------


def test_token_made_for_tests_and_sdks_is_accepted() -> None:
    token = make_client_jwt(WALLET_KEY, audience=AUDIENCE, iat=NOW, exp=NOW + 3600)
    header, body, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "EdDSA", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(body + "==")) == {
        "iss": WALLET_DID,
        "aud": AUDIENCE,
        "iat": NOW,
        "exp": NOW + 3600,
    }
    verify(token)


@pytest.mark.parametrize(
    ("token", "client_id"),
    [
        pytest.param(craft(), CLIENT_ID, id="raw"),
        pytest.param("Bearer " + craft(), CLIENT_ID, id="bearer"),
        pytest.param("bearer " + craft(), CLIENT_ID, id="bearer-lowercase"),
        pytest.param(craft(), WALLET_DID, id="client-id-with-did-key"),
        pytest.param(craft({"alg": "EdDSA"}), CLIENT_ID, id="no-typ"),
        pytest.param(craft(claims=claims(iat=int(NOW))), CLIENT_ID, id="integer-iat"),
        pytest.param(craft(claims=claims(iat=NOW + 120)), CLIENT_ID, id="iat-within-leeway"),
        pytest.param(craft(claims=claims(exp=NOW - 120)), CLIENT_ID, id="exp-within-leeway"),
        pytest.param(craft(claims=claims(aud=AUDIENCE + "/")), CLIENT_ID, id="aud-trailing-slash"),
        pytest.param(craft(claims=claims(aud=["x", AUDIENCE])), CLIENT_ID, id="aud-list"),
        pytest.param(craft(claims=claims(sub="random", act="client_auth")), CLIENT_ID, id="extra"),
    ],
)
def test_good_tokens_are_accepted(token: str, client_id: str) -> None:
    verify(token, client_id)


def test_now_defaults_to_the_clock() -> None:
    token = make_client_jwt(WALLET_KEY, audience=AUDIENCE, iat=time.time())
    verify_client_jwt(token, client_id=CLIENT_ID, audience=AUDIENCE)
    stale = make_client_jwt(WALLET_KEY, audience=AUDIENCE, iat=NOW, exp=NOW + 60)
    with pytest.raises(Unauthorized):
        verify_client_jwt(stale, client_id=CLIENT_ID, audience=AUDIENCE)


# -- refused tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "typ": "JWT"},
        {"alg": "none", "typ": "JWT"},
        {"alg": "ES256", "typ": "JWT"},
        {"alg": "eddsa", "typ": "JWT"},
        {"typ": "JWT"},
        {"alg": ["EdDSA"], "typ": "JWT"},
    ],
)
def test_wrong_alg_is_refused(header: dict[str, object]) -> None:
    assert refusal(craft(header)).startswith("unsupported JWT alg")


def test_wrong_typ_is_refused() -> None:
    assert refusal(craft({"alg": "EdDSA", "typ": "JWE"})).startswith("unsupported JWT typ")


def test_none_alg_without_signature_is_refused() -> None:
    token = craft({"alg": "none"}).rsplit(".", 1)[0] + "."
    assert "alg" in refusal(token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(craft(key=OTHER_KEY), id="signed-by-another-key"),
        pytest.param(craft().rsplit(".", 1)[0] + ".", id="empty-signature"),
        pytest.param(craft()[:-4], id="truncated-signature"),
        pytest.param(craft().rsplit(".", 1)[0] + "." + b64url(bytes(64)), id="zero-signature"),
        pytest.param(
            ".".join(
                [
                    craft().split(".")[0],
                    b64url(json.dumps(claims(aud="https://evil.example")).encode()),
                    craft().split(".")[2],
                ]
            ),
            id="tampered-claims",
        ),
    ],
)
def test_bad_signature_is_refused(token: str) -> None:
    assert refusal(token) == "JWT signature does not verify with the key in 'iss'"


@pytest.mark.parametrize(
    "aud",
    [
        "https://other.example.com",
        "http://push.example.com",
        "https://push.example.com/t1",
        "",
        5,
        ["https://other.example.com"],
        [],
        None,
    ],
)
def test_wrong_aud_is_refused(aud: object) -> None:
    token = craft(claims=claims(aud=aud))
    assert refusal(token).startswith("JWT claim 'aud' must be this server's URL")


@pytest.mark.parametrize("exp", [NOW - 121, NOW - 86_400, 0])
def test_expired_token_is_refused(exp: float) -> None:
    assert refusal(craft(claims=claims(exp=exp))).startswith("JWT expired")


@pytest.mark.parametrize("iat", [NOW + 121, NOW + 86_400])
def test_iat_in_the_future_is_refused(iat: float) -> None:
    assert "in the future" in refusal(craft(claims=claims(iat=iat)))


@pytest.mark.parametrize(
    ("changes", "description"),
    [
        ({"iat": None}, "JWT claim 'iat' is required"),
        ({"iat": "1700000000"}, "JWT claim 'iat' must be a number of Unix seconds"),
        ({"iat": True}, "JWT claim 'iat' must be a number of Unix seconds"),
        ({"exp": "never"}, "JWT claim 'exp' must be a number of Unix seconds"),
        ({"exp": 10**400}, "JWT claim 'exp' must be a finite number of Unix seconds"),
    ],
)
def test_bad_time_claims_are_refused(changes: dict[str, object], description: str) -> None:
    assert refusal(craft(claims=claims(**changes))) == description


@pytest.mark.parametrize(
    ("iss_key", "client_id"),
    [
        pytest.param(WALLET_KEY, ed25519_to_did_key(raw_public(OTHER_KEY)), id="other-client"),
        pytest.param(OTHER_KEY, CLIENT_ID, id="other-signer"),
        pytest.param(WALLET_KEY, CLIENT_ID[:-1], id="client-prefix"),
        pytest.param(WALLET_KEY, CLIENT_ID.lower(), id="client-case"),
    ],
)
def test_iss_not_matching_the_client_is_refused(iss_key: Ed25519PrivateKey, client_id: str) -> None:
    token = make_client_jwt(iss_key, audience=AUDIENCE, iat=NOW)
    assert refusal(token, client_id) == (
        "JWT claim 'iss' is not the did:key of the client being changed"
    )


@pytest.mark.parametrize(
    "iss",
    [
        None,
        5,
        CLIENT_ID,
        "did:web:push.example.com",
        "did:key:z" + b58encode(b"\xe7\x01" + bytes(33)),
        WALLET_DID + "0",
    ],
)
def test_iss_that_is_not_an_ed25519_did_key_is_refused(iss: object) -> None:
    assert refusal(craft(claims=claims(iss=iss))).startswith("JWT claim 'iss'")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("Bearer ", id="bearer-only"),
        pytest.param("abc", id="one-part"),
        pytest.param("a.b", id="two-parts"),
        pytest.param(craft() + ".x", id="four-parts"),
        pytest.param("!!!." + craft().split(".", 1)[1], id="header-not-base64url"),
        pytest.param(b64url(b"{not json") + "." + craft().split(".", 1)[1], id="header-not-json"),
        pytest.param(b64url(b"[1]") + "." + craft().split(".", 1)[1], id="header-array"),
        pytest.param(craft(claims=["iss"]), id="claims-array"),
        pytest.param(craft(claims="claims"), id="claims-string"),
        pytest.param(craft().split(".")[0] + ".%%%." + craft().split(".")[2], id="claims-b64"),
        pytest.param(craft() + "==", id="padded-signature"),
        pytest.param(craft()[:-1] + "*", id="signature-bad-character"),
        pytest.param("x" * 10_000, id="huge"),
    ],
)
def test_malformed_token_is_refused(token: str) -> None:
    refusal(token)
