"""The HTTP edge turns every bad input into a 4xx in the envelope, naming what was wrong.

JSON nested deeper than any decoder recurses, header bytes that are not ASCII, ids longer than
the log's subjects hold, forwarded-for chains, weak relay keys, and tenant JWTs that outlived a
deletion. The app runs in-process over the in-memory log.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Litestar

from eventstore.memory import InMemoryEventLog
from relaypush.auth.relay_signature import RelaySignatureVerifier
from relaypush.auth.tenant_jwt import make_tenant_jwt
from relaypush.config import ConfigError, Settings, load_settings
from relaypush.domain.events import ProviderType
from relaypush.http import create_app
from relaypush.http.ratelimit import RateLimiter
from relaypush.metrics import Registry
from relaypush.service import RelayService

ALL: frozenset[ProviderType] = frozenset({"apns", "apns-sandbox", "fcm", "noop"})
ADMIN = "admin-t0ken"
SECRET = "tenant-jwt-secret-of-at-least-32-bytes"
RELAY_KEY = Ed25519PrivateKey.generate()
RELAY_PUBLIC = RELAY_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
DEEP = b"[" * 1000 + b"]" * 1000
DEEPER = b"[" * 200_000 + b"]" * 200_000


@dataclass
class Env:
    app: Litestar
    log: InMemoryEventLog

    def client(self, peer: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(peer, 4321))  # type: ignore[arg-type]
        return httpx.AsyncClient(transport=transport, base_url="http://relaypush")


def make_env(settings: Settings) -> Env:
    log = InMemoryEventLog()
    service = RelayService(log, enabled_providers=lambda _: ALL, metrics=Registry())
    app = create_app(settings=settings, service=service, metrics=Registry(), event_log=log)
    return Env(app, log)


@pytest_asyncio.fixture(name="env")
async def fx_env() -> AsyncIterator[Env]:
    yield make_env(Settings(admin_token=ADMIN, tenant_jwt_secret=SECRET, rate_limit_per_minute=0))


def envelope(response: httpx.Response, status: int) -> list[tuple[str, str]]:
    """The ``(field, location)`` pairs of a refusal with ``status``, checked to be one."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["status"] == "FAILED"
    return [(f["field"], f["location"]) for f in body["fields"]]


ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
JSON = {"content-type": "application/json"}

# Every route that reads a JSON body, and how the body is named when it is refused.
JSON_ROUTES = [
    ("POST", "/clients", {}),
    ("POST", "/clients/wallet-1", {}),
    ("POST", "/acme/clients", {}),
    ("POST", "/acme/clients/wallet-1", {}),
    ("POST", "/tenants", ADMIN_AUTH),
]


# -- JSON nested too deeply ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [DEEP, DEEPER], ids=["1000-deep", "200000-deep"])
@pytest.mark.parametrize(("method", "path", "headers"), JSON_ROUTES)
async def test_deeply_nested_json_is_a_400_naming_the_body(
    env: Env, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> None:
    async with env.client() as http:
        assert (await http.post("/tenants", json={"id": "acme"}, headers=ADMIN_AUTH)).is_success
        response = await http.request(method, path, content=body, headers={**JSON, **headers})
    assert envelope(response, 400) == [("body", "body")]


@pytest.mark.parametrize("field", ["client_id", "type", "token"])
async def test_deep_json_inside_a_register_member_names_that_member(env: Env, field: str) -> None:
    body = {"client_id": "wallet-1", "type": "noop", "token": "t"}
    encoded = httpx.Request("POST", "/", json=body).content
    deep = encoded.replace(f'"{field}":'.encode(), f'"{field}":'.encode() + DEEP + b',"x":', 1)
    async with env.client() as http:
        response = await http.post("/clients", content=deep, headers=JSON)
    assert envelope(response, 400) == [("body", "body")]


async def test_deep_json_inside_a_cleartext_blob_names_the_blob(env: Env) -> None:
    async with env.client() as http:
        registered = await http.post(
            "/clients", json={"client_id": "w", "type": "noop", "token": "t"}
        )
        assert registered.status_code == 200
        blob = base64.b64encode(b'{"title":"t","body":"b","extra":' + DEEP + b"}").decode()
        body = {"id": "m", "payload": {"topic": "ab", "flags": 16, "blob": blob}}
        response = await http.post("/clients/w", json=body)
    assert envelope(response, 400) == [("payload.blob", "body")]


async def test_deep_json_in_a_service_account_names_credentials(env: Env) -> None:
    async with env.client() as http:
        assert (await http.post("/tenants", json={"id": "acme"}, headers=ADMIN_AUTH)).is_success
        response = await http.post(
            "/tenants/acme/fcm_v1", files={"credentials": DEEP}, headers=ADMIN_AUTH
        )
    assert envelope(response, 400) == [("credentials", "body")]


def jwt_with_deep_header() -> str:
    header = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).rstrip(b"=").decode()
    return f"{header}.e30.c2ln"


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/clients"), ("DELETE", "/clients/wallet-1"), ("GET", "/tenants/acme")],
)
async def test_a_jwt_whose_json_is_nested_too_deeply_is_a_401(
    env: Env, method: str, path: str
) -> None:
    body = {"client_id": "wallet-1", "type": "noop", "token": "t"} if method == "POST" else None
    headers = {"authorization": f"Bearer {jwt_with_deep_header()}"}
    async with env.client() as http:
        response = await http.request(method, path, json=body, headers=headers)
    assert envelope(response, 401) == [("Authorization", "header")]


# -- header bytes that are not ASCII ------------------------------------------------------------

NOT_ASCII = [b"Bearer \xff\xfe", b"Bearer caf\xc3\xa9", b"\x80", "Bearer é".encode("latin-1")]


@pytest.mark.parametrize("value", NOT_ASCII)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/clients"),
        ("DELETE", "/clients/wallet-1"),
        ("POST", "/tenants"),
        ("GET", "/tenants/acme"),
        ("GET", "/tenants"),
        ("GET", "/admin/events"),
        ("GET", "/admin/clients/w/state"),
        ("POST", "/admin/clients/w/erase"),
    ],
)
async def test_authorization_that_is_not_ascii_is_a_401_naming_it(
    env: Env, method: str, path: str, value: bytes
) -> None:
    body = {"client_id": "wallet-1", "type": "noop", "token": "t", "id": "acme"}
    async with env.client() as http:
        response = await http.request(
            method, path, json=body if method == "POST" else None, headers={b"authorization": value}
        )
    assert envelope(response, 401) == [("Authorization", "header")]


async def test_a_jwt_claims_part_that_is_not_ascii_is_a_401() -> None:
    """Not caught by a framing regex: the claims are decoded only after the signature."""
    env = make_env(Settings(tenant_jwt_secret=SECRET, rate_limit_per_minute=0))
    good = make_tenant_jwt(SECRET, tenant_id="acme", exp=time.time() + 60)
    header, _, signature = good.split(".")
    token = f"Bearer {header}.\u00e9\u00e9.{signature}".encode("latin-1")
    async with env.client() as http:
        response = await http.get("/tenants/acme", headers={b"authorization": token})
    assert envelope(response, 401) == [("Authorization", "header")]


@pytest.mark.parametrize("header", ["x-ed25519-signature", "x-ed25519-timestamp"])
@pytest.mark.parametrize("value", NOT_ASCII)
async def test_signature_headers_that_are_not_ascii_are_a_401(header: str, value: bytes) -> None:
    env = make_env(Settings(relay_public_key=RELAY_PUBLIC))
    headers = {b"x-ed25519-signature": b"ab" * 64, b"x-ed25519-timestamp": b"1"}
    headers[header.encode()] = value
    async with env.client() as http:
        response = await http.post("/clients/w", content=b"{}", headers=headers)
    assert (header.replace("x-ed25519", "X-Ed25519").title(), "header") in [
        (f.title(), loc) for f, loc in envelope(response, 401)
    ]


@pytest.mark.parametrize("value", [b"\xff, 198.51.100.7", b"198.51.100.7 \xe9", b"\x80"])
async def test_forwarded_for_that_is_not_ascii_is_a_400_naming_it(value: bytes) -> None:
    env = make_env(Settings(trusted_proxies=("127.0.0.1",)))
    async with env.client() as http:
        response = await http.delete("/clients/w", headers={b"x-forwarded-for": value})
    assert envelope(response, 400) == [("X-Forwarded-For", "header")]


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/form-data; boundary=\xe9\xe9",
        b"application/json; charset=\xff",
        b"\xff\xfe",
        b"multipart/form-data",
        b"application/x-www-form-urlencoded; charset=caf\xc3\xa9",
    ],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tenants/acme/apns", b"--\xe9\r\n"),
        ("/tenants/acme/fcm_v1", b"--\xe9\r\n"),
        ("/tenants", b'{"id": "other"}'),
        ("/clients", b'{"client_id": "w", "type": "noop", "token": "t"}'),
    ],
)
async def test_any_content_type_is_never_a_500(
    env: Env, path: str, body: bytes, content_type: bytes
) -> None:
    async with env.client() as http:
        assert (await http.post("/tenants", json={"id": "acme"}, headers=ADMIN_AUTH)).is_success
        headers = {b"authorization": ADMIN_AUTH["authorization"].encode()}
        response = await http.post(
            path, content=body, headers={**headers, b"content-type": content_type}
        )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["status"] == "FAILED"


# -- admin routes: ids, rate limit ----------------------------------------------------------------


@pytest.mark.parametrize("length", [256, 5000])
async def test_admin_routes_refuse_long_ids_naming_them(env: Env, length: int) -> None:
    long = "a" * length
    cases = [
        ("GET", f"/admin/clients/{long}/state", {}, ("id", "path")),
        ("POST", f"/admin/clients/{long}/erase", {}, ("id", "path")),
        ("GET", "/admin/clients/w/state", {"tenant": long}, ("tenant", "query")),
        ("POST", "/admin/clients/w/erase", {"tenant": long}, ("tenant", "query")),
        ("GET", "/admin/events", {"client": long}, ("client", "query")),
        ("GET", "/admin/events", {"notification": long}, ("notification", "query")),
        ("GET", "/admin/events", {"tenant": long}, ("tenant", "query")),
    ]
    async with env.client() as http:
        for method, path, params, field in cases:
            response = await http.request(method, path, params=params, headers=ADMIN_AUTH)
            assert envelope(response, 400) == [field], (method, path, params)


async def test_admin_routes_take_lookalike_ids(env: Env) -> None:
    async with env.client() as http:
        for client_id in ["a.*", "a.>", "w\u00fc"]:
            response = await http.get(
                "/admin/events", params={"client": client_id}, headers=ADMIN_AUTH
            )
            assert response.status_code == 200, response.text


async def test_admin_routes_are_rate_limited_wrong_tokens_included() -> None:
    env = make_env(Settings(admin_token=ADMIN, rate_limit_per_minute=2))
    async with env.client() as http:
        assert (await http.get("/admin/events", headers=ADMIN_AUTH)).status_code == 200
        wrong = await http.get("/admin/events", headers={"authorization": "Bearer guess"})
        assert wrong.status_code == 401
        limited = await http.get("/admin/events", headers=ADMIN_AUTH)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        async with env.client("192.0.2.1") as other:
            assert (await other.get("/admin/events", headers=ADMIN_AUTH)).status_code == 200


# -- X-Forwarded-For ------------------------------------------------------------------------------

TRUSTED = ("127.0.0.1", "10.0.0.0/8", "2001:db8:ffff::/48")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "counted_as"),
    [
        # the right-most entry that is not a trusted proxy is the client
        ("127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3, 10.9.9.9", "198.51.100.7"),
        ("10.0.0.5", "garbage, 198.51.100.7", "198.51.100.7"),
        # every hop trusted: the left-most one
        ("127.0.0.1", "10.1.2.3, 10.2.3.4", "10.1.2.3"),
        # from an untrusted peer nothing is believed
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),
        # ports and brackets, IPv4 mapped into IPv6
        ("127.0.0.1", "198.51.100.7:5555", "198.51.100.7"),
        ("127.0.0.1", "[2001:db8:1:2::99]:443", "2001:db8:1:2::/64"),
        ("127.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),
        ("::ffff:127.0.0.1", "198.51.100.7", "198.51.100.7"),
        # IPv6 clients by their /64
        ("2001:db8:1:2::1", None, "2001:db8:1:2::/64"),
        ("127.0.0.1", "2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:ffff:1::1", "2001:db8:5:6::7", "2001:db8:5:6::/64"),
        # empty entries are skipped
        ("127.0.0.1", " , 198.51.100.7, ,", "198.51.100.7"),
        ("127.0.0.1", " , ", "127.0.0.1"),
    ],
)
def test_the_client_is_the_right_most_untrusted_hop(
    peer: str, forwarded_for: str | None, counted_as: str
) -> None:
    limiter = RateLimiter(10, trusted_proxies=TRUSTED)
    assert limiter.client_address(peer, forwarded_for) == counted_as


@pytest.mark.parametrize("forwarded_for", ["unknown", "6.6.6.6, not-an-ip", "1.2.3.4.5"])
def test_a_client_entry_that_is_not_an_address_is_refused(forwarded_for: str) -> None:
    limiter = RateLimiter(10, trusted_proxies=TRUSTED)
    with pytest.raises(Exception) as info:
        limiter.client_address("127.0.0.1", forwarded_for)
    assert type(info.value).__name__ == "InvalidRequest"


async def test_every_forwarded_for_header_is_read_in_order() -> None:
    """A proxy that adds its own header line, after the client's, is still the last word."""
    env = make_env(Settings(trusted_proxies=("127.0.0.1",), rate_limit_per_minute=1))
    async with env.client() as http:
        first = await http.delete(
            "/clients/w",
            headers=[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7")],
        )
        assert first.status_code == 200
        # the client forges another first header: still counted as 198.51.100.7
        second = await http.delete(
            "/clients/w",
            headers=[("x-forwarded-for", "7.7.7.7"), ("x-forwarded-for", "198.51.100.7")],
        )
        assert second.status_code == 429


async def test_ipv6_clients_of_one_64_share_a_bucket() -> None:
    env = make_env(Settings(rate_limit_per_minute=1))
    async with env.client("2001:db8:1:2::1") as one, env.client("2001:db8:1:2::ffff") as two:
        assert (await one.delete("/clients/w")).status_code == 200
        assert (await two.delete("/clients/w")).status_code == 429
    async with env.client("2001:db8:1:3::1") as other:
        assert (await other.delete("/clients/w")).status_code == 200


# -- the relay key ------------------------------------------------------------------------------

WEAK_KEYS = [
    "00" * 32,  # all zeros: a point of order 4
    "01" + "00" * 31,  # the neutral element
    "ec" + "ff" * 30 + "7f",  # order 2
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "ed" + "ff" * 30 + "7f",  # y = p: not reduced
    "02" + "00" * 31,  # not on the curve
    "00" * 31,  # 31 bytes
    "zz" * 32,  # not hex
]


@pytest.mark.parametrize("key", WEAK_KEYS)
def test_a_weak_or_invalid_relay_key_is_refused_at_start(key: str) -> None:
    with pytest.raises(ConfigError, match="RELAYPUSH_RELAY_PUBLIC_KEY"):
        load_settings({"RELAYPUSH_RELAY_PUBLIC_KEY": key})
    with pytest.raises(ValueError):
        RelaySignatureVerifier(key)


def test_a_real_relay_key_is_taken() -> None:
    settings = load_settings({"RELAYPUSH_RELAY_PUBLIC_KEY": RELAY_PUBLIC})
    assert settings.relay_public_key == RELAY_PUBLIC
    for _ in range(20):
        raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        RelaySignatureVerifier(raw.hex())


# -- a tenant JWT from before a deletion ----------------------------------------------------------


def tenant_bearer(tenant_id: str, *, iat: float | None) -> dict[str, str]:
    token = make_tenant_jwt(SECRET, tenant_id=tenant_id, exp=time.time() + 600, iat=iat)
    return {"authorization": f"Bearer {token}"}


async def test_a_tenant_jwt_issued_before_the_deletion_cannot_create_the_tenant_again(
    env: Env,
) -> None:
    before = tenant_bearer("acme", iat=time.time() - 60)
    async with env.client() as http:
        assert (await http.post("/tenants", json={"id": "acme"}, headers=before)).is_success
        assert (await http.delete("/tenants/acme", headers=before)).is_success
        refused = await http.post("/tenants", json={"id": "acme"}, headers=before)
        assert envelope(refused, 401) == [("Authorization", "header")]
        no_iat = await http.post(
            "/tenants", json={"id": "acme"}, headers=tenant_bearer("acme", iat=None)
        )
        assert envelope(no_iat, 401) == [("Authorization", "header")]
        assert (await http.get("/tenants/acme", headers=ADMIN_AUTH)).status_code == 404

        after = tenant_bearer("acme", iat=time.time() + 2)
        assert (await http.post("/tenants", json={"id": "acme"}, headers=after)).is_success
        assert (await http.get("/tenants/acme", headers=ADMIN_AUTH)).status_code == 200


async def test_the_admin_token_creates_a_deleted_tenant_again(env: Env) -> None:
    async with env.client() as http:
        assert (await http.post("/tenants", json={"id": "acme"}, headers=ADMIN_AUTH)).is_success
        assert (await http.delete("/tenants/acme", headers=ADMIN_AUTH)).is_success
        again = await http.post("/tenants", json={"id": "acme"}, headers=ADMIN_AUTH)
        assert again.status_code == 200, again.text


async def test_a_tenant_never_deleted_is_created_by_any_valid_jwt(env: Env) -> None:
    async with env.client() as http:
        fresh = await http.post(
            "/tenants", json={"id": "new"}, headers=tenant_bearer("new", iat=None)
        )
        assert fresh.status_code == 200, fresh.text
