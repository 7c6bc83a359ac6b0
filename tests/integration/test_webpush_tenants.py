"""A tenant's VAPID key pair over real NATS JetStream and PostgreSQL, delivering to the Web Push
stand-in: the upload and its checks, what ``GET /tenants/{id}`` shows, delivery signed with the
tenant's own key, removal, the read table's fingerprint, and no private key anywhere it should
not be. The stack is the tenant tests' (tests/integration/test_tenants.py) with the Web Push
settings pointing at the stand-in.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg import sql
from structlog.testing import capture_logs

from projections.runner import Projector
from relaypush.config import DEFAULT_TENANT
from relaypush.delivery.vapid import VapidKey
from relaypush.domain.events import (
    NotificationDelivered,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
)
from relaypush.testing.webpush import WebPushStandIn
from tests.integration.test_tenants import (
    Stack,
    _database_dump,
    _forms,
    admin,
    as_tenant,
    errors,
    fields,
    of,
    open_stack,
)

pytestmark = pytest.mark.integration

SUBJECT = "https://wallet.example.com/contact"


def vapid_pem(curve: ec.EllipticCurve | None = None) -> tuple[bytes, str]:
    """A PKCS#8 PEM private key and the VAPID public key browsers would subscribe with."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = VapidKey(key, SUBJECT).public_key if key.curve.name == "secp256r1" else ""
    return pem, public


@contextlib.asynccontextmanager
async def webpush_stack(
    nats_url: str, database_url: str, name: str, tmp: Path, **overrides: Any
) -> AsyncIterator[tuple[Stack, WebPushStandIn]]:
    async with WebPushStandIn() as push:
        options: dict[str, Any] = {"webpush_hosts": ("127.0.0.1",), "webpush_ca_file": push.ca_file}
        async with open_stack(nats_url, database_url, name, tmp, **options, **overrides) as stack:
            yield stack, push


@pytest_asyncio.fixture(name="stacked")
async def fx_stacked(
    nats_url: str, database_url: str, unique_name: str, tmp_path: Path
) -> AsyncIterator[tuple[Stack, WebPushStandIn]]:
    async with webpush_stack(nats_url, database_url, unique_name, tmp_path) as stacked:
        yield stacked


async def upload(
    stack: Stack, tenant_id: str, pem: bytes | None, subject: str | None, **headers: str
) -> httpx.Response:
    data = {} if subject is None else {"subject": subject}
    files = {} if pem is None else {"vapid_private_key": ("vapid.pem", pem, "application/x-pem")}
    return await stack.http.post(
        f"/tenants/{tenant_id}/webpush",
        data=data,
        files=files or None,
        headers=headers or as_tenant(tenant_id),
    )


async def test_a_tenant_delivers_signed_with_its_own_vapid_key(
    stacked: tuple[Stack, WebPushStandIn],
) -> None:
    stack, push = stacked
    await stack.create("web")
    pem, public = vapid_pem()
    r = await upload(stack, "web", pem, SUBJECT)
    assert r.status_code == 200, r.text
    view = (await stack.http.get("/tenants/web", headers=as_tenant("web"))).json()
    assert view["enabled_providers"] == ["webpush"]
    assert view["vapid_public_key"] == public
    (changed,) = of(TenantCredentialsChanged, await stack.events())
    assert changed.kind == "webpush"
    assert changed.vapid_public_key == public
    assert [kind for kind, _, _ in await stack.stored_rows("web")] == ["webpush"]

    browser = push.subscribe(application_server_key=public)
    assert (await stack.register("web", "browser", "webpush", browser.token())).status_code == 200
    assert (await stack.push("web", "browser", "m1")).status_code == 202
    await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
    (record,) = push.sent_to(browser)
    assert record.status == 201
    assert record.vapid_key == public
    assert record.claims is not None
    assert record.claims["sub"] == SUBJECT
    assert record.json["topic"] == "t0"

    await Projector(stack.log, stack.database_url, schema=stack.settings.database_schema).catch_up()
    query = sql.SQL("SELECT webpush_fingerprint FROM {} WHERE tenant_id = %s").format(
        sql.Identifier(stack.settings.database_schema, "tenants")
    )
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        row = await (await conn.execute(query, ("web",))).fetchone()
    assert row == (changed.fingerprint,)


async def test_an_sec1_key_as_a_text_field_is_taken_too(
    stacked: tuple[Stack, WebPushStandIn],
) -> None:
    stack, _ = stacked
    await stack.create("text")
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    r = await stack.http.post(
        "/tenants/text/webpush",
        data={"vapid_private_key": sec1.decode(), "subject": "mailto:ops@example.com"},
        headers=admin(),
    )
    assert r.status_code == 200, r.text
    view = (await stack.http.get("/tenants/text", headers=admin())).json()
    assert view["vapid_public_key"] == VapidKey(key, SUBJECT).public_key


def _rsa_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("pem", "subject", "bad"),
    [
        (None, None, [("vapid_private_key", "body"), ("subject", "body")]),
        (b"not a key", SUBJECT, [("vapid_private_key", "body")]),
        ("rsa", SUBJECT, [("vapid_private_key", "body")]),
        ("p384", SUBJECT, [("vapid_private_key", "body")]),
        ("p256", "ops@example.com", [("subject", "body")]),
        ("p256", "http://example.com", [("subject", "body")]),
    ],
)
async def test_a_bad_upload_is_400_naming_the_field(
    stacked: tuple[Stack, WebPushStandIn],
    pem: bytes | str | None,
    subject: str | None,
    bad: list[tuple[str, str]],
) -> None:
    stack, _ = stacked
    await stack.create("bad")
    key: bytes | None
    match pem:
        case "rsa":
            key = _rsa_pem()
        case "p384":
            key = vapid_pem(ec.SECP384R1())[0]
        case "p256":
            key = vapid_pem()[0]
        case _:
            key = pem if isinstance(pem, bytes) or pem is None else pem.encode()
    r = await upload(stack, "bad", key, subject)
    assert r.status_code == 400
    assert fields(r) == bad
    assert await stack.stored_rows("bad") == []


async def test_removing_the_key_disables_webpush(stacked: tuple[Stack, WebPushStandIn]) -> None:
    stack, push = stacked
    await stack.create("rm")
    pem, public = vapid_pem()
    assert (await upload(stack, "rm", pem, SUBJECT)).status_code == 200
    r = await stack.http.delete("/tenants/rm/webpush", headers=as_tenant("rm"))
    assert r.status_code == 204
    assert [e.kind for e in of(TenantCredentialsRemoved, await stack.events())] == ["webpush"]
    view = (await stack.http.get("/tenants/rm", headers=admin())).json()
    assert view["enabled_providers"] == []
    assert view["vapid_public_key"] is None
    assert await stack.stored_rows("rm") == []
    browser = push.subscribe(application_server_key=public)
    r = await stack.register("rm", "browser", "webpush", browser.token())
    assert r.status_code == 400
    assert errors(r) == ["provider_not_available"]


async def test_the_default_tenant_takes_its_key_from_the_settings(
    nats_url: str, database_url: str, unique_name: str, tmp_path: Path
) -> None:
    pem, public = vapid_pem()
    key_file = tmp_path / "vapid.pem"
    key_file.write_bytes(pem)
    async with webpush_stack(
        nats_url,
        database_url,
        unique_name,
        tmp_path,
        vapid_private_key_file=key_file,
        vapid_subject=SUBJECT,
    ) as (stack, _):
        view = (await stack.http.get(f"/tenants/{DEFAULT_TENANT}", headers=admin())).json()
        assert view["enabled_providers"] == ["webpush"]
        assert view["vapid_public_key"] == public
        r = await upload(
            stack, DEFAULT_TENANT, pem, SUBJECT, Authorization=admin()["Authorization"]
        )
        assert r.status_code == 400
        assert fields(r) == [("id", "path")]


async def test_no_vapid_private_key_reaches_the_log_the_database_or_the_logs(
    stacked: tuple[Stack, WebPushStandIn],
) -> None:
    stack, push = stacked
    pem, public = vapid_pem()
    with capture_logs() as logs:
        await stack.create("s")
        assert (await upload(stack, "s", pem, SUBJECT)).status_code == 200
        browser = push.subscribe(application_server_key=public)
        assert (await stack.register("s", "b", "webpush", browser.token())).status_code == 200
        assert (await stack.push("s", "b", "m1")).status_code == 202
        await stack.wait_for(lambda ev: bool(of(NotificationDelivered, ev)))
        await Projector(
            stack.log, stack.database_url, schema=stack.settings.database_schema
        ).catch_up()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    forms = _forms(pem) | {scalar, scalar.hex().encode()}
    log_records = [(e.subject, e.data) async for e in stack.log.read()]
    database = await _database_dump(
        stack.database_url, (stack.settings.database_schema, stack.settings.credentials_schema)
    )
    captured = [repr(entry).encode() for entry in logs]
    assert any(b"delivery_attempt" in line for line in captured)
    auth_secret = browser.auth.hex().encode()
    for form in forms:
        for subject, data in log_records:
            assert form not in data, f"the VAPID key in the event log at {subject}"
        for where, value in database:
            assert form not in value, f"the VAPID key in {where}"
        for line in captured:
            assert form not in line, f"the VAPID key in the logs: {line[:200]!r}"
    for line in captured:
        assert browser.token().encode() not in line, "a whole subscription in the logs"
        assert auth_secret not in line
