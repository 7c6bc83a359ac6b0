"""The FCM stand-in checks what Google checks: the JWT-bearer assertion, the bearer token, the body.

Without these checks a provider could pass its tests while sending what FCM refuses.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator

import google.auth.crypt
import google.auth.jwt
import httpx
import pytest
import pytest_asyncio

from relaypush.testing.fcm import FcmStandIn


@pytest_asyncio.fixture(name="fcm")
async def fx_fcm() -> AsyncIterator[FcmStandIn]:
    async with FcmStandIn() as standin:
        yield standin


def assertion(info: dict[str, str], **claims: object) -> str:
    """A JWT-bearer assertion signed with the private key in ``info``."""
    signer = google.auth.crypt.RSASigner.from_service_account_info(info)  # type: ignore[no-untyped-call]
    now = int(time.time())
    payload = {
        "iss": info["client_email"],
        "aud": info["token_uri"],
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    token: bytes = google.auth.jwt.encode(signer, payload)  # type: ignore[no-untyped-call]
    return token.decode()


@pytest.mark.parametrize(
    ("claims", "other_key", "error"),
    [
        ({}, False, None),
        ({}, True, "Invalid JWT Signature."),
        ({"aud": "https://oauth2.googleapis.com/token"}, False, "aud must be"),
        ({"iss": "nobody@example.iam.gserviceaccount.com"}, False, "unknown issuer"),
        ({"exp": int(time.time()) + 7200}, False, "short-lived"),
    ],
)
async def test_token_endpoint_verifies_the_assertion(
    fcm: FcmStandIn, claims: dict[str, object], other_key: bool, error: str | None
) -> None:
    info = fcm.service_account_info()
    if other_key:
        info = {**info, "private_key": FcmStandIn().service_account_info()["private_key"]}
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
    form["assertion"] = assertion(info, **claims)
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=fcm.ca_file)) as http:
        response = await http.post(fcm.token_url, data=form)
    if error is None:
        assert response.status_code == 200
        assert response.json()["expires_in"] == 3600
        assert fcm.oauth.token(response.json()["access_token"]) is not None
    else:
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"
        assert error in response.json()["error_description"]


async def test_messages_send_checks_bearer_and_body_as_fcm_does(fcm: FcmStandIn) -> None:
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": assertion(fcm.service_account_info()),
    }
    path = "/v1/projects/relaypush-standin/messages:send"
    async with httpx.AsyncClient(
        base_url=fcm.url, verify=ssl.create_default_context(cafile=fcm.ca_file)
    ) as http:
        bearer = (await http.post("/token", data=form)).json()["access_token"]
        auth = {"authorization": f"Bearer {bearer}"}
        unauthenticated = await http.post(path, json={"message": {"token": "t"}})
        number = await http.post(
            path, headers=auth, json={"message": {"token": "t", "data": {"flags": 17}}}
        )
        no_token = await http.post(path, headers=auth, json={"message": {}})
        fine = await http.post(
            path, headers=auth, json={"message": {"token": "t", "data": {"a": "1"}}}
        )
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["status"] == "UNAUTHENTICATED"
    assert number.status_code == 400
    assert "message.data[flags].value" in number.json()["error"]["message"]
    assert no_token.status_code == 400
    assert fine.status_code == 200
    assert [r.status for r in fcm.requests] == [401, 400, 400, 200]
