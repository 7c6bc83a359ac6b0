"""Whatever arrives as a JWT is a 401 naming ``Authorization`` or a verified claim set, never a
500: non-ASCII bytes, bad base64, bad JSON, wrong types anywhere; a client JWT without ``exp``
ages out; the tenant JWT secret is long enough. Property tests throw arbitrary text at both
verifiers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore import InMemoryEventLog
from relaypush.auth import ed25519_to_did_key, make_client_jwt, verify_client_jwt
from relaypush.auth.tenant_jwt import verify_tenant_jwt
from relaypush.config import ConfigError, Settings, load_settings
from relaypush.domain.errors import Unauthorized
from relaypush.http.app import create_app
from relaypush.http.auth import TenantAuthorizer
from relaypush.metrics import Registry
from relaypush.service import RelayService
from tests.asgi import asgi_client

WALLET = Ed25519PrivateKey.from_private_bytes(bytes(32))
WALLET_DID = ed25519_to_did_key(WALLET.public_key().public_bytes_raw())
CLIENT_ID = WALLET_DID.removeprefix("did:key:")
AUDIENCE = "http://127.0.0.1:8080"
SECRET = "a-tenant-jwt-secret-of-32-bytes!"
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: object, claims: object, secret: str = SECRET) -> str:
    """A tenant token with any header and claims (already JSON text or values), signed."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(head.encode('utf-8', 'surrogatepass'))}.{b64(body.encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def eddsa(header: object, claims: object) -> str:
    """A client token with any header and claims, signed by the wallet's key."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(head.encode())}.{b64(body.encode('utf-8', 'surrogatepass'))}"
    return f"{signing_input}.{b64(WALLET.sign(signing_input.encode()))}"


def tenant_refusal(token: str, tenant_id: str = "acme") -> str:
    with pytest.raises(Unauthorized) as refused:
        verify_tenant_jwt(token, secret=SECRET, tenant_id=tenant_id, now=NOW)
    (field,) = refused.value.fields
    assert (field.field, field.location) == ("Authorization", "header")
    return field.description


def client_refusal(token: str, **options: Any) -> str:
    with pytest.raises(Unauthorized) as refused:
        verify_client_jwt(token, client_id=CLIENT_ID, audience=AUDIENCE, now=NOW, **options)
    (field,) = refused.value.fields
    assert (field.field, field.location) == ("Authorization", "header")
    return field.description


GOOD_CLAIMS = {"iss": WALLET_DID, "aud": AUDIENCE, "iat": NOW}
EDDSA = {"alg": "EdDSA", "typ": "JWT"}
HS256 = {"alg": "HS256", "typ": "JWT"}

# -- wrong input anywhere is a refusal -------------------------------------------------------


def malformed(header: dict[str, str]) -> list[Any]:
    """Tokens whose header is right and whose rest is not; and some whose header is not."""
    h = b64(json.dumps(header).encode())
    return [
        pytest.param(f"{h}.\u00e9.AA", id="non-ascii-claims"),
        pytest.param(f"{h}.e30.\u00e9\u00e9", id="non-ascii-signature"),
        pytest.param(f"{h}.e30\u00ff.AA", id="non-ascii-after-claims"),
        pytest.param(f"\u00ff{h}.e30.AA", id="non-ascii-header"),
        pytest.param(f"{h}.e30.AA\ud800", id="lone-surrogate"),
        pytest.param(f"{h}.a.AA", id="claims-one-character"),
        pytest.param(f"{h}.{b64(b'{')}.AA", id="claims-json-cut"),
        pytest.param(h + "." + b64(b"\xff{}") + ".AA", id="claims-not-utf8"),
        pytest.param(f"{h}.{b64(b'[' * 100_000)}.AA", id="claims-nested-too-deep"),
        pytest.param(f"{h}.e30=.AA", id="claims-padded"),
        pytest.param(b64(b"\xff\xfe{}") + ".e30.AA", id="header-not-utf8"),
        pytest.param(b64(b'{"alg": "HS256"') + ".e30.AA", id="header-json-cut"),
        pytest.param(b64(b"[" * 100_000) + ".e30.AA", id="header-nested-too-deep"),
        pytest.param("..", id="three-empty-parts"),
    ]


@pytest.mark.parametrize("token", malformed(HS256))
def test_malformed_tenant_jwts_are_refused(token: str) -> None:
    assert tenant_refusal(token)


@pytest.mark.parametrize("token", malformed(EDDSA))
def test_malformed_client_jwts_are_refused(token: str) -> None:
    assert client_refusal(token)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"sub": "\ud800", "exp": NOW + 60}, id="sub-lone-surrogate"),
        pytest.param({"sub": ["acme"], "exp": NOW + 60}, id="sub-list"),
        pytest.param({"sub": {"id": "acme"}, "exp": NOW + 60}, id="sub-object"),
        pytest.param({"sub": "acme", "exp": [NOW]}, id="exp-list"),
        pytest.param({"sub": "acme", "exp": NOW + 60, "nbf": "now"}, id="nbf-string"),
        pytest.param({"sub": "acme", "exp": float("nan")}, id="exp-nan"),
        pytest.param('{"sub": "acme", "exp": 1e999}', id="exp-overflows"),
        # iat says whether a JWT predates a tenant's deletion: it must be a time when present
        pytest.param({"sub": "acme", "exp": NOW + 60, "iat": "yesterday"}, id="iat-string"),
    ],
)
def test_wrong_claim_types_in_a_signed_tenant_jwt(claims: object) -> None:
    assert tenant_refusal(hs256(HS256, claims))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"alg": "HS256", "kid": 5}, id="kid-number"),
        pytest.param({"alg": "HS256", "crit": "b64"}, id="crit-string"),
        pytest.param({"alg": "HS256", "crit": ["b64"], "b64": False}, id="detached"),
        pytest.param({"alg": {"HS256": 1}}, id="alg-object"),
        pytest.param({"alg": "HS256", "typ": ["JWT"]}, id="typ-list"),
        pytest.param('{"alg": "HS256", "typ": "\\ud800"}', id="typ-lone-surrogate"),
    ],
)
def test_wrong_header_types_in_a_signed_tenant_jwt(header: object) -> None:
    assert tenant_refusal(hs256(header, {"sub": "acme", "exp": NOW + 60}))


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({**GOOD_CLAIMS, "iss": ["did:key:z"]}, id="iss-list"),
        pytest.param({**GOOD_CLAIMS, "aud": {"url": AUDIENCE}}, id="aud-object"),
        pytest.param({**GOOD_CLAIMS, "aud": [[AUDIENCE]]}, id="aud-nested"),
        pytest.param({**GOOD_CLAIMS, "iat": [NOW]}, id="iat-list"),
        pytest.param({**GOOD_CLAIMS, "iss": "did:key:z\ud800"}, id="iss-lone-surrogate"),
        pytest.param({**GOOD_CLAIMS, "iss": "did:key:z" + "1" * 100}, id="iss-not-a-key"),
    ],
)
def test_wrong_claim_types_in_a_signed_client_jwt(claims: object) -> None:
    assert client_refusal(eddsa(EDDSA, claims))


# -- a client JWT without exp ages out -------------------------------------------------------


def test_a_client_jwt_without_exp_is_valid_for_a_day_by_default() -> None:
    fresh = make_client_jwt(WALLET, audience=AUDIENCE, iat=NOW - 86_400)
    verify_client_jwt(fresh, client_id=CLIENT_ID, audience=AUDIENCE, now=NOW)  # leeway left
    old = make_client_jwt(WALLET, audience=AUDIENCE, iat=NOW - 86_400 - 121)
    assert "without 'exp'" in client_refusal(old)
    forever = make_client_jwt(WALLET, audience=AUDIENCE, iat=NOW - 86_400 * 365)
    assert "without 'exp'" in client_refusal(forever)


def test_a_client_jwt_with_exp_is_valid_until_its_exp_whatever_its_age() -> None:
    long_lived = make_client_jwt(WALLET, audience=AUDIENCE, iat=NOW - 86_400 * 7, exp=NOW + 60)
    verify_client_jwt(long_lived, client_id=CLIENT_ID, audience=AUDIENCE, now=NOW)


def test_the_maximum_age_is_a_setting() -> None:
    assert Settings().client_jwt_max_age == 86_400
    settings = load_settings({"RELAYPUSH_CLIENT_JWT_MAX_AGE": "60"})
    assert settings.client_jwt_max_age == 60
    token = make_client_jwt(WALLET, audience=AUDIENCE, iat=NOW - 200)
    assert "without 'exp'" in client_refusal(token, max_age=settings.client_jwt_max_age)


# -- the tenant JWT secret -------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["short", "x" * 31, "\u00e9" * 15])
def test_a_tenant_jwt_secret_under_32_bytes_stops_the_start(secret: str) -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_settings({"RELAYPUSH_TENANT_JWT_SECRET": secret})


def test_a_32_byte_tenant_jwt_secret_will_do() -> None:
    assert load_settings({"RELAYPUSH_TENANT_JWT_SECRET": "\u00e9" * 16}).tenant_jwt_secret


# -- through HTTP: 401 in the relay envelope, never 500 --------------------------------------


@pytest_asyncio.fixture(name="http")
async def fx_http() -> AsyncIterator[httpx.AsyncClient]:
    service = RelayService(InMemoryEventLog(), enabled_providers=lambda _: frozenset({"noop"}))
    app = create_app(
        settings=Settings(tenant_jwt_secret=SECRET, rate_limit_per_minute=0, client_jwt_max_age=60),
        service=service,
        metrics=Registry(),
    )
    async with asgi_client(app) as client:
        yield client


def header_bytes(header: dict[str, str]) -> list[Any]:
    h = b"Bearer " + b64(json.dumps(header).encode()).encode()
    return [
        pytest.param(h + b".\xe9.AA", id="latin-1-byte"),
        pytest.param(h + b".e30.\x80\xff", id="high-bytes"),
        pytest.param(b"Bearer \xff\xfe.\x80.\x00", id="high-bytes-and-nul"),
        pytest.param(h + b".e30.AA==", id="padding"),
        pytest.param(h + b"." + b64(b"{").encode() + b".AA", id="claims-not-json"),
        pytest.param(h + b".W10.AA", id="claims-array"),
        pytest.param(b"Bearer " + b64(b"{").encode() + b".e30.AA", id="header-not-json"),
    ]


def assert_401_naming_authorization(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["status"] == "FAILED"
    assert [(f["field"], f["location"]) for f in body["fields"]] == [("Authorization", "header")]


@pytest.mark.parametrize("value", header_bytes(EDDSA))
async def test_a_bad_client_jwt_is_401_on_register(http: httpx.AsyncClient, value: bytes) -> None:
    response = await http.post(
        "/clients",
        json={"client_id": CLIENT_ID, "type": "noop", "token": "t"},
        headers={b"authorization": value},
    )
    assert_401_naming_authorization(response)


@pytest.mark.parametrize("value", header_bytes(HS256))
async def test_a_bad_tenant_jwt_is_401(http: httpx.AsyncClient, value: bytes) -> None:
    response = await http.get("/tenants/acme", headers={b"authorization": value})
    assert_401_naming_authorization(response)


async def test_a_stale_client_jwt_without_exp_is_401(http: httpx.AsyncClient) -> None:
    stale = make_client_jwt(WALLET, audience=AUDIENCE, iat=time.time() - 300)
    response = await http.delete(f"/clients/{CLIENT_ID}", headers={"authorization": stale})
    assert_401_naming_authorization(response)
    assert "without 'exp'" in response.json()["fields"][0]["description"]
    fresh = make_client_jwt(WALLET, audience=AUDIENCE, iat=time.time())
    assert (
        await http.delete(f"/clients/{CLIENT_ID}", headers={"authorization": fresh})
    ).status_code == 200


# -- any string: verified claims or our own error, nothing else ------------------------------

jwt_ish = st.lists(
    st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z0-9_=-]{0,40}", fullmatch=True)),
    min_size=0,
    max_size=5,
).map(".".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
claim_sets = st.dictionaries(
    st.sampled_from(["sub", "exp", "nbf", "iat", "iss", "aud", "kid"]) | st.text(max_size=5),
    json_values,
    max_size=6,
)
headers = st.one_of(
    st.just(HS256),
    st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64"]), json_values),
)


def after_a_good_header(header: dict[str, str]) -> st.SearchStrategy[str]:
    """Anything after a header that passes, so that the rest of the token is read too."""
    h = b64(json.dumps(header).encode())
    return st.one_of(st.text(), jwt_ish).map(lambda rest: f"{h}.{rest}")


@settings(deadline=None, max_examples=300)
@given(st.one_of(st.text(), jwt_ish, after_a_good_header(HS256)))
def test_any_string_is_a_tenant_claim_set_or_a_refusal(token: str) -> None:
    authorizer = TenantAuthorizer(admin_token=None, jwt_secret=SECRET, clock=lambda: NOW)
    with contextlib.suppress(Unauthorized):
        authorizer.tenant({"authorization": f"Bearer {token}"}, "acme")


@settings(deadline=None, max_examples=300)
@given(st.one_of(st.text(), jwt_ish, after_a_good_header(EDDSA)))
def test_any_string_is_a_client_claim_set_or_a_refusal(token: str) -> None:
    with contextlib.suppress(Unauthorized):
        verify_client_jwt(token, client_id=CLIENT_ID, audience=AUDIENCE, now=NOW)


@settings(deadline=None, max_examples=100)
@given(headers, claim_sets)
def test_any_signed_tenant_jwt_is_a_claim_set_or_a_refusal(
    header: dict[str, Any], claims: dict[str, Any]
) -> None:
    try:
        verified = verify_tenant_jwt(
            hs256(header, claims), secret=SECRET, tenant_id="acme", now=NOW
        )
    except Unauthorized:
        return
    assert verified.sub == "acme"


@settings(deadline=None, max_examples=100)
@given(claim_sets)
def test_any_signed_client_jwt_is_accepted_or_a_refusal(claims: dict[str, Any]) -> None:
    with contextlib.suppress(Unauthorized):
        verify_client_jwt(
            eddsa(EDDSA, {**GOOD_CLAIMS, **claims}), client_id=CLIENT_ID, audience=AUDIENCE, now=NOW
        )
