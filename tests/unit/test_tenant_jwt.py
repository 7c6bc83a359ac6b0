"""HS256 tenant JWTs, checked by hand-rolled HMAC, and who the tenant authorizer lets in."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from relaypush.auth.tenant_jwt import make_tenant_jwt, verify_tenant_jwt
from relaypush.domain.errors import Unauthorized
from relaypush.http.auth import TenantAuthorizer

SECRET = "tenant-jwt-secret-for-tests-32-bytes+"
NOW = 1_800_000_000.0


def compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(
    claims: dict[str, object], *, header: dict[str, object] | None = None, secret: str = SECRET
) -> str:
    head = b64(compact(header or {"alg": "HS256", "typ": "JWT"}))
    body = b64(compact(claims))
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def refusal(jwt: str, tenant_id: str = "acme", now: float = NOW) -> str:
    with pytest.raises(Unauthorized) as refused:
        verify_tenant_jwt(jwt, secret=SECRET, tenant_id=tenant_id, now=now)
    (field,) = refused.value.fields
    assert (field.field, field.location) == ("Authorization", "header")
    return field.description


def test_a_token_made_elsewhere_verifies() -> None:
    claims = verify_tenant_jwt(
        token({"sub": "acme", "exp": NOW + 60}), secret=SECRET, tenant_id="acme", now=NOW
    )
    assert claims.sub == "acme"


def test_make_and_verify_agree_with_a_known_vector() -> None:
    made = make_tenant_jwt(SECRET, tenant_id="acme", exp=NOW + 60)
    assert made == token({"sub": "acme", "exp": int(NOW + 60)})
    assert verify_tenant_jwt(made, secret=SECRET, tenant_id="acme", now=NOW).exp == NOW + 60


def test_another_tenants_token_is_refused() -> None:
    assert "another tenant" in refusal(token({"sub": "other", "exp": NOW + 60}))


def test_exp_is_required_and_honoured_with_a_little_leeway() -> None:
    assert "'exp' is required" in refusal(token({"sub": "acme"}))
    assert "expired" in refusal(token({"sub": "acme", "exp": NOW - 31}))
    verify_tenant_jwt(
        token({"sub": "acme", "exp": NOW - 29}), secret=SECRET, tenant_id="acme", now=NOW
    )
    assert "number" in refusal(token({"sub": "acme", "exp": "tomorrow"}))
    assert "number" in refusal(token({"sub": "acme", "exp": True}))


def test_not_before_is_honoured() -> None:
    assert "nbf" in refusal(token({"sub": "acme", "exp": NOW + 600, "nbf": NOW + 300}))


@pytest.mark.parametrize("alg", ["none", "HS512", "RS256", "EdDSA", None])
def test_only_hs256_is_accepted(alg: str | None) -> None:
    assert "alg" in refusal(token({"sub": "acme", "exp": NOW + 60}, header={"alg": alg}))


def test_an_unsigned_token_is_refused() -> None:
    head = b64(b'{"alg":"none"}')
    body = b64(json.dumps({"sub": "acme", "exp": NOW + 60}).encode())
    assert "alg" in refusal(f"{head}.{body}.")


def test_a_wrong_secret_or_altered_claims_are_refused() -> None:
    assert "signature" in refusal(token({"sub": "acme", "exp": NOW + 60}, secret="other"))
    good = token({"sub": "other", "exp": NOW + 60})
    head, _, signature = good.split(".")
    forged = f"{head}.{b64(json.dumps({'sub': 'acme', 'exp': NOW + 60}).encode())}.{signature}"
    assert "signature" in refusal(forged)


@pytest.mark.parametrize(
    "bad",
    ["", "a.b", "a.b.c.d", "!!.??.**", b64(b"[1]") + "." + b64(b"{}") + ".x", "x" * 9000],
)
def test_malformed_tokens_are_401_not_500(bad: str) -> None:
    assert refusal(bad)


def test_a_wrong_typ_is_refused() -> None:
    assert "typ" in refusal(
        token({"sub": "acme", "exp": NOW + 60}, header={"alg": "HS256", "typ": "JWS"})
    )


# the authorizer


AUTH = TenantAuthorizer(admin_token="admin-secret", jwt_secret=SECRET, clock=lambda: NOW)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def test_the_admin_token_opens_every_tenant_and_the_admin_routes() -> None:
    assert AUTH.tenant(bearer("admin-secret"), "acme") == "admin"
    assert AUTH.tenant({"authorization": "bearer admin-secret"}, "other") == "admin"
    assert AUTH.admin(bearer("admin-secret")) == "admin"


def test_a_tenant_jwt_opens_its_own_tenant_only_and_never_the_admin_routes() -> None:
    jwt = make_tenant_jwt(SECRET, tenant_id="acme", exp=NOW + 60)
    assert AUTH.tenant(bearer(jwt), "acme") == "tenant"
    with pytest.raises(Unauthorized):
        AUTH.tenant(bearer(jwt), "other")
    with pytest.raises(Unauthorized):
        AUTH.admin(bearer(jwt))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "admin-secret"},
        {"authorization": "Basic x"},
        bearer("admin-secreT"),
        bearer("not-a-jwt"),
    ],
)
def test_missing_or_wrong_credentials_name_the_header(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized) as refused:
        AUTH.tenant(headers, "acme")
    assert [(f.field, f.location) for f in refused.value.fields] == [("Authorization", "header")]


def test_with_nothing_configured_everyone_is_refused() -> None:
    closed = TenantAuthorizer(admin_token=None, jwt_secret=None)
    with pytest.raises(Unauthorized):
        closed.tenant(bearer("anything"), "acme")
    with pytest.raises(Unauthorized):
        closed.admin(bearer("anything"))


def test_without_a_jwt_secret_only_the_admin_token_works() -> None:
    admin_only = TenantAuthorizer(admin_token="admin-secret", jwt_secret=None)
    assert admin_only.tenant(bearer("admin-secret"), "acme") == "admin"
    with pytest.raises(Unauthorized):
        admin_only.tenant(bearer(make_tenant_jwt(SECRET, tenant_id="acme", exp=NOW + 60)), "acme")
