"""FcmProvider against the FCM + OAuth stand-in, over real HTTP/2 and HTTP/1.1 with TLS.

Each test gets its own stand-in (its own CA, service account and port). Waiting is on results,
never on the clock: token expiry is the stand-in's ``expire_tokens`` or the provider's clock.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio
import structlog

from relaypush.config import ConfigError, Settings
from relaypush.delivery.fcm import FcmProvider, ServiceAccountError
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    Target,
    TokenInvalid,
)
from relaypush.delivery.retry_after import MAX_RETRY_AFTER
from relaypush.domain.events import NotificationAccepted, NotifyMessage, RawMessage
from relaypush.domain.provider_payload import fcm_message
from relaypush.metrics import Registry
from relaypush.testing.fcm import DeviceScript, FcmStandIn

DEVICE = "fcm-device-token:APA91b" + "x" * 120


def accepted(
    *,
    flags: int = 17,
    blob: str | None = "AbC+/dEf==",
    notify: NotifyMessage | None = None,
    raw: RawMessage | None = None,
) -> NotificationAccepted:
    return NotificationAccepted(
        event_id="e1",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        tenant_id="t1",
        client_id="c1",
        message_id="m1",
        dedup_key="k1",
        topic="7f6e" * 16,
        flags=flags,
        encrypted=bool(flags & 1),
        blob=blob,
        notify=notify,
        raw=raw,
    )


def target(token: str = DEVICE) -> Target:
    return Target(tenant_id="t1", client_id="c1", provider="fcm", token=token)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture(name="fcm")
async def fx_fcm() -> AsyncIterator[FcmStandIn]:
    async with FcmStandIn() as standin:
        yield standin


@pytest.fixture(name="clock")
def fx_clock() -> Clock:
    return Clock()


@pytest_asyncio.fixture(name="provider", params=[True, False], ids=["h2", "http1.1"])
async def fx_provider(
    request: pytest.FixtureRequest, fcm: FcmStandIn, clock: Clock
) -> AsyncIterator[FcmProvider]:
    provider = FcmProvider.from_service_account(
        fcm.service_account_info(),
        base_url=fcm.url,
        verify=fcm.ca_file,
        http2=request.param,
        clock=clock,
        metrics=Registry(),
    )
    yield provider
    await provider.close()


# -- what FCM receives -----------------------------------------------------------------------


async def test_encrypted_body_is_fcm_message_byte_for_byte(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    blob = "QUJD+/9//w==" * 40
    n = accepted(blob=blob)
    outcome = await provider.send(n, target())
    assert isinstance(outcome, Delivered)
    [sent] = fcm.requests
    assert sent.body == msgspec.json.encode(fcm_message(n, DEVICE))
    message = sent.json["message"]
    assert message["token"] == DEVICE
    assert message["data"] == {"topic": n.topic, "flags": "17", "blob": blob}
    assert b'"blob":"' + blob.encode() + b'"' in sent.body
    assert "notification" not in message
    assert message["android"] == {"priority": "HIGH"}
    assert message["apns"] == {"payload": {"aps": {"content-available": 1}}}


async def test_cleartext_adds_a_notification(provider: FcmProvider, fcm: FcmStandIn) -> None:
    n = accepted(flags=16, blob="eyJ0In0=", notify=NotifyMessage(title="Hi \u2603", body='say "x"'))
    assert isinstance(await provider.send(n, target()), Delivered)
    message = fcm.requests[0].json["message"]
    assert message["notification"] == {"title": "Hi \u2603", "body": 'say "x"'}
    assert message["data"] == {"topic": n.topic, "flags": "16", "blob": "eyJ0In0="}


async def test_every_data_value_is_a_string(provider: FcmProvider, fcm: FcmStandIn) -> None:
    n = accepted(flags=0, blob=None, raw=RawMessage(topic="ab", tag=4002, message="opaque"))
    assert isinstance(await provider.send(n, target()), Delivered)
    data = fcm.requests[0].json["message"]["data"]
    assert data == {"topic": "ab", "tag": "4002", "message": "opaque"}
    assert all(isinstance(v, str) for v in data.values())


async def test_the_http_version_is_the_one_asked_for(
    provider: FcmProvider, fcm: FcmStandIn, request: pytest.FixtureRequest
) -> None:
    await provider.send(accepted(), target())
    want = "HTTP/2" if request.node.callspec.id == "h2" else "HTTP/1.1"
    assert fcm.requests[0].http_version == want


async def test_delivered_carries_fcms_message_name(provider: FcmProvider, fcm: FcmStandIn) -> None:
    outcome = await provider.send(accepted(), target())
    assert outcome == Delivered("projects/relaypush-standin/messages/0:1%standin")


# -- the OAuth token -------------------------------------------------------------------------


async def test_token_is_fetched_from_token_uri_with_the_fcm_scope(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    await provider.send(accepted(), target())
    [grant] = fcm.oauth.grants
    info = fcm.service_account_info()
    assert grant.claims["iss"] == info["client_email"]
    assert grant.claims["aud"] == info["token_uri"] == f"{fcm.url}/token"
    assert grant.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert fcm.requests[0].bearer == grant.token


async def test_token_is_cached_across_sends(provider: FcmProvider, fcm: FcmStandIn) -> None:
    for _ in range(5):
        assert isinstance(await provider.send(accepted(), target()), Delivered)
    assert len(fcm.oauth.grants) == 1
    assert {r.bearer for r in fcm.requests} == {fcm.oauth.grants[0].token}


async def test_concurrent_first_sends_fetch_one_token(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    outcomes = await asyncio.gather(*(provider.send(accepted(), target()) for _ in range(64)))
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len(fcm.oauth.grants) == 1


@pytest.mark.parametrize("how", ["expired", "revoked"])
async def test_a_401_refreshes_the_token_once_and_sends_again(
    provider: FcmProvider, fcm: FcmStandIn, how: str
) -> None:
    await provider.send(accepted(), target())
    first = fcm.oauth.grants[0].token
    assert first is not None
    if how == "expired":
        fcm.oauth.expire_tokens()
    else:
        fcm.oauth.revoke(first)
    assert isinstance(await provider.send(accepted(), target()), Delivered)
    assert len(fcm.oauth.grants) == 2
    second = fcm.oauth.grants[1].token
    assert [(r.bearer, r.status) for r in fcm.requests[1:]] == [(first, 401), (second, 200)]


async def test_concurrent_sends_with_an_expired_token_cause_one_refresh(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    await provider.send(accepted(), target())
    fcm.oauth.expire_tokens()
    outcomes = await asyncio.gather(*(provider.send(accepted(), target()) for _ in range(64)))
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len(fcm.oauth.grants) == 2
    assert sum(r.status == 401 for r in fcm.requests) == 64


async def test_token_is_renewed_before_it_expires_without_a_401(
    provider: FcmProvider, fcm: FcmStandIn, clock: Clock
) -> None:
    await provider.send(accepted(), target())
    clock.now += 3600 - 300
    assert isinstance(await provider.send(accepted(), target()), Delivered)
    assert len(fcm.oauth.grants) == 2
    assert [r.status for r in fcm.requests] == [200, 200]


async def test_a_second_401_means_the_credentials_are_wrong(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    fcm.device(DEVICE).error(401, "UNAUTHENTICATED")
    outcome = await provider.send(accepted(), target())
    assert isinstance(outcome, CredentialsInvalid)
    assert len(fcm.oauth.grants) == 2
    assert len(fcm.sent_to(DEVICE)) == 2


async def test_a_project_the_account_cannot_send_for_is_credentials_invalid(
    fcm: FcmStandIn,
) -> None:
    info = {**fcm.service_account_info(), "project_id": "someone-elses"}
    provider = FcmProvider.from_service_account(
        info, base_url=fcm.url, verify=fcm.ca_file, metrics=Registry()
    )
    try:
        outcome = await provider.send(accepted(), target())
    finally:
        await provider.close()
    assert isinstance(outcome, CredentialsInvalid)
    assert "PERMISSION_DENIED (403)" in outcome.reason
    assert [r.status for r in fcm.requests] == [403, 403]


async def test_a_refused_grant_is_credentials_invalid_and_nothing_is_sent(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    fcm.oauth.refusal = "Invalid grant: account not found"
    outcome = await provider.send(accepted(), target())
    assert isinstance(outcome, CredentialsInvalid)
    assert "invalid_grant" in outcome.reason
    assert fcm.requests == []


# -- scripted answers ------------------------------------------------------------------------

TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"

SCRIPTS: list[tuple[str, DeviceScript, Outcome]] = [
    ("ok", DeviceScript().ok(), Delivered("projects/relaypush-standin/messages/0:1%standin")),
    (
        "unregistered",
        DeviceScript().error(404, "UNREGISTERED", message="Requested entity was not found."),
        TokenInvalid("UNREGISTERED (404): Requested entity was not found."),
    ),
    (
        "invalid token",
        DeviceScript().error(400, "INVALID_ARGUMENT", message=TOKEN_MESSAGE),
        TokenInvalid(f"INVALID_ARGUMENT (400): {TOKEN_MESSAGE}"),
    ),
    (
        "invalid token field",
        DeviceScript().error(
            400, "INVALID_ARGUMENT", message="bad", field_violation="message.token"
        ),
        TokenInvalid("INVALID_ARGUMENT (400): bad"),
    ),
    (
        "invalid message",
        DeviceScript().error(400, "INVALID_ARGUMENT", message="Invalid 'message.android.ttl'"),
        Rejected("INVALID_ARGUMENT (400): Invalid 'message.android.ttl'"),
    ),
    (
        "sender id mismatch: the token is another sender's, only its client is affected",
        DeviceScript().error(403, "SENDER_ID_MISMATCH", message="SenderId mismatch"),
        TokenInvalid("SENDER_ID_MISMATCH (403): SenderId mismatch", "token_foreign"),
    ),
    (
        "third party auth",
        DeviceScript().error(401, "THIRD_PARTY_AUTH_ERROR", message="APNs said no"),
        CredentialsInvalid("THIRD_PARTY_AUTH_ERROR (401): APNs said no"),
    ),
    (
        "quota",
        DeviceScript().error(429, "QUOTA_EXCEEDED", message="slow down", retry_after=2),
        Retry("QUOTA_EXCEEDED (429): slow down", 2.0),
    ),
    (
        "unavailable",
        DeviceScript().error(503, "UNAVAILABLE", message="try later"),
        Retry("UNAVAILABLE (503): try later"),
    ),
    (
        "unavailable for years",
        DeviceScript().error(503, "UNAVAILABLE", message="go away", retry_after=99999999),
        Retry("UNAVAILABLE (503): go away", MAX_RETRY_AFTER),
    ),
    (
        "internal",
        DeviceScript().error(500, "INTERNAL", message="oops"),
        Retry("INTERNAL (500): oops"),
    ),
]


@pytest.mark.parametrize(
    ("script", "expected"), [s[1:] for s in SCRIPTS], ids=[s[0] for s in SCRIPTS]
)
async def test_scripted_answer_maps_to_its_outcome(
    provider: FcmProvider, fcm: FcmStandIn, script: DeviceScript, expected: Outcome
) -> None:
    fcm.device(DEVICE).steps[:] = list(script.steps)
    assert await provider.send(accepted(), target()) == expected
    assert len(fcm.oauth.grants) == 1


async def test_429_with_an_http_date_retry_after(provider: FcmProvider, fcm: FcmStandIn) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    fcm.device(DEVICE).error(429, "QUOTA_EXCEEDED", retry_after=when)
    outcome = await provider.send(accepted(), target())
    assert isinstance(outcome, Retry)
    assert outcome.after is not None
    assert 25 <= outcome.after <= 30


async def test_fails_n_times_then_delivers(provider: FcmProvider, fcm: FcmStandIn) -> None:
    fcm.device(DEVICE).fail(2)
    outcomes = [await provider.send(accepted(), target()) for _ in range(3)]
    assert [type(o) for o in outcomes] == [Retry, Retry, Delivered]


async def test_unknown_answer_is_retried_and_logged_without_the_token(
    provider: FcmProvider, fcm: FcmStandIn
) -> None:
    fcm.device(DEVICE).error(418, "TEAPOT", message="short and stout", retry_after=5)
    with structlog.testing.capture_logs() as logs:
        outcome = await provider.send(accepted(), target())
    assert outcome == Retry("unknown answer TEAPOT (418): short and stout", 5.0)
    [entry] = [e for e in logs if e["event"] == "fcm_unknown_answer"]
    assert entry["status"] == 418
    assert DEVICE not in json.dumps(logs, default=str)


async def test_a_slow_answer_is_a_timeout_to_retry(fcm: FcmStandIn) -> None:
    fcm.device(DEVICE).slow(60)
    provider = FcmProvider.from_service_account(
        fcm.service_account_info(),
        base_url=fcm.url,
        verify=fcm.ca_file,
        timeout=1.0,
        metrics=Registry(),
    )
    try:
        outcome = await provider.send(accepted(), target())
    finally:
        await provider.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith("timeout")


@pytest.mark.parametrize("where", ["token endpoint", "fcm"])
async def test_nobody_listening_is_a_connection_error_to_retry(fcm: FcmStandIn, where: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{sock.getsockname()[1]}"
    info = fcm.service_account_info()
    if where == "token endpoint":
        info = {**info, "token_uri": f"{closed}/token"}
    provider = FcmProvider.from_service_account(
        info, base_url=closed, verify=fcm.ca_file, metrics=Registry()
    )
    try:
        outcome = await provider.send(accepted(), target())
    finally:
        await provider.close()
    assert isinstance(outcome, Retry)
    expected = "oauth token endpoint unreachable" if where == "token endpoint" else "connection:"
    assert outcome.reason.startswith(expected)


# -- factories -------------------------------------------------------------------------------


async def test_from_settings_reads_the_service_account_file(
    fcm: FcmStandIn, tmp_path: Path
) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(fcm.service_account_info()))
    settings = Settings(fcm_credentials_file=path, fcm_url=fcm.url)
    provider = FcmProvider.from_settings(settings, verify=fcm.ca_file, metrics=Registry())
    assert provider is not None
    try:
        assert isinstance(await provider.send(accepted(), target()), Delivered)
    finally:
        await provider.close()
    assert provider.project_id == "relaypush-standin"


def test_from_settings_without_a_credentials_file_is_none() -> None:
    assert FcmProvider.from_settings(Settings()) is None


@pytest.mark.parametrize("content", ["not json", "[1]", '{"type": "service_account"}'])
def test_from_settings_with_a_bad_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "sa.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="RELAYPUSH_FCM_CREDENTIALS_FILE"):
        FcmProvider.from_settings(Settings(fcm_credentials_file=path))


@pytest.mark.parametrize(
    "change",
    [
        {"type": "authorized_user"},
        {"project_id": ""},
        {"token_uri": None},
        {"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"},
        {"client_email": None},
    ],
)
async def test_unusable_service_accounts_are_refused(
    fcm: FcmStandIn, change: dict[str, object]
) -> None:
    info = {k: v for k, v in {**fcm.service_account_info(), **change}.items() if v is not None}
    with pytest.raises(ServiceAccountError):
        FcmProvider.from_service_account(info, base_url=fcm.url, metrics=Registry())
