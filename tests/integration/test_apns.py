"""ApnsProvider against the APNs stand-in, over real TLS and HTTP/2: headers and bytes, the
shared JWT and its renewal, certificate mode, scripted failures, timeouts, GOAWAY, endpoints."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relaypush.config import ConfigError, Settings
from relaypush.delivery.apns import ApnsCertificate, ApnsProvider, ProviderToken
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
from relaypush.domain.events import (
    NotificationAccepted,
    NotifyMessage,
    ProviderType,
    RawMessage,
)
from relaypush.domain.provider_payload import apns_id
from relaypush.metrics import Registry
from relaypush.testing.apns import (
    ApnsStandIn,
    Scripted,
    bare,
    fail_times,
    hold,
    reason,
    slow,
    status,
)
from relaypush.testing.tls import self_signed_client

KEY_ID, TEAM_ID, TOPIC, TOKEN = "KEY1234567", "TEAM123456", "com.example.wallet", "ab12" * 16
MINUTE = 60.0


class Clock:
    """A clock the test moves by hand; starts at the real time."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def notification(shape: str = "encrypted", message_id: str = "m-1") -> NotificationAccepted:
    base = NotificationAccepted(
        event_id="e",
        occurred_at=datetime.now(UTC),
        tenant_id="tenant-a",
        client_id="client-a",
        message_id=message_id,
        dedup_key=message_id,
        topic="7f3c",
    )
    if shape == "cleartext":
        blob = base64.b64encode(b'{"title":"Hi","body":"There \\u00e9"}').decode()
        notify = NotifyMessage(title="Hi", body="There \u00e9")
        return msgspec.structs.replace(base, flags=16, blob=blob, notify=notify)
    if shape == "raw":
        return msgspec.structs.replace(
            base, raw=RawMessage(topic="7f3c", tag=4002, message="opaque")
        )
    return msgspec.structs.replace(base, flags=17, encrypted=True, blob="ZW5j+/=")


EXPECTED_BODIES = {
    "encrypted": b'{"aps":{"alert":{"title":"You have new notifications. Open to view"},'
    b'"content-available":1,"mutable-content":1},"topic":"7f3c","blob":"ZW5j+/=","flags":17}',
    "cleartext": b'{"aps":{"alert":{"title":"Hi","body":"There \xc3\xa9"},'
    b'"content-available":1,"mutable-content":1},"topic":"7f3c"}',
    "raw": b'{"aps":{"alert":{"title":"You have new notifications. Open to view"},'
    b'"content-available":1,"mutable-content":1},"topic":"7f3c","tag":4002,"message":"opaque"}',
}


def target(token: str = TOKEN, provider: ProviderType = "apns") -> Target:
    return Target("tenant-a", "client-a", provider, token)


def jwt_parts(jwt: str) -> tuple[dict[str, object], dict[str, object]]:
    def part(text: str) -> dict[str, object]:
        decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(text + "=="))
        return decoded

    header, claims, _ = jwt.split(".")
    return part(header), part(claims)


@pytest.fixture(name="clock")
def fx_clock() -> Clock:
    return Clock()


@pytest.fixture(name="key")
def fx_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(name="apns")
async def fx_apns(clock: Clock, key: ec.EllipticCurvePrivateKey) -> AsyncIterator[ApnsStandIn]:
    async with ApnsStandIn(clock=clock, max_concurrent_streams=2) as apns:
        apns.add_key(KEY_ID, TEAM_ID, key.public_key())
        yield apns


@pytest.fixture(name="provider")
async def fx_provider(
    apns: ApnsStandIn, clock: Clock, key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[ApnsProvider]:
    token = ProviderToken(key, KEY_ID, TEAM_ID, clock=clock)
    provider = ApnsProvider(
        token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file, timeout=5.0, metrics=Registry()
    )
    yield provider
    await provider.close()


@pytest.mark.parametrize("shape", ["encrypted", "cleartext", "raw"])
async def test_token_auth_sends_exact_headers_and_body(
    apns: ApnsStandIn, provider: ApnsProvider, shape: str
) -> None:
    outcome = await provider.send(notification(shape), target())
    expected_id = apns_id("tenant-a", "client-a", "m-1")
    assert outcome == Delivered(expected_id)
    [record] = apns.requests
    assert record.token == TOKEN
    assert record.body == EXPECTED_BODIES[shape]
    assert record.jwt is not None
    assert dict(record.headers) == {
        "apns-id": expected_id,
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "authorization": f"bearer {record.jwt}",
    }
    header, claims = jwt_parts(record.jwt)
    assert header == {"alg": "ES256", "kid": KEY_ID}
    assert set(claims) == {"iss", "iat"}
    assert claims["iss"] == TEAM_ID


async def test_same_apns_id_on_every_retry(apns: ApnsStandIn, provider: ApnsProvider) -> None:
    apns.script(TOKEN, fail_times(1, 503))
    assert isinstance(await provider.send(notification(), target()), Retry)
    assert isinstance(await provider.send(notification(), target()), Delivered)
    other = await provider.send(notification(), Target("tenant-a", "client-b", "apns", TOKEN))
    ids = [r.headers["apns-id"] for r in apns.requests]
    assert ids[0] == ids[1] != ids[2]
    assert other == Delivered(ids[2])


async def replace_connections(apns: ApnsStandIn, provider: ApnsProvider) -> None:
    """GOAWAY while a request is in flight; return once the provider has seen it."""
    release = asyncio.Event()
    apns.script(TOKEN, hold(release))
    seen = len(apns.requests)
    in_flight = asyncio.create_task(provider.send(notification(), target()))
    await apns.received(seen + 1)
    apns.goaway()
    assert isinstance(await in_flight, Retry)


async def test_jwt_is_shared_across_connections_and_renewed_in_band(
    apns: ApnsStandIn, provider: ApnsProvider, clock: Clock
) -> None:
    # Six requests held open at once, two streams per connection: three connections.
    release = asyncio.Event()
    apns.script(TOKEN, hold(release, Scripted(times=6)))
    sends = [asyncio.create_task(provider.send(notification(), target())) for _ in range(6)]
    await apns.received(6)
    release.set()
    assert all(isinstance(o, Delivered) for o in await asyncio.gather(*sends))
    assert len({r.connection for r in apns.requests}) == 3
    assert len({r.jwt for r in apns.requests}) == 1
    jwt = apns.requests[0].jwt or ""
    start = clock.now

    async def send_at(minutes: float) -> str:
        clock.now = start + minutes * MINUTE
        assert isinstance(await provider.send(notification(), target()), Delivered)
        return apns.requests[-1].jwt or ""

    assert await send_at(19.9) == jwt
    await replace_connections(apns, provider)  # a fresh connection still gets the same JWT
    assert await send_at(39.9) == jwt
    renewed = await send_at(40.0)
    assert renewed != jwt
    assert jwt_parts(renewed)[1]["iat"] == int(start + 40 * MINUTE)
    assert jwt_parts(jwt)[1]["iat"] == int(start)
    assert await send_at(79.9) == renewed
    assert await send_at(80.0) != renewed
    assert len({r.connection for r in apns.requests}) == 4


async def test_expired_provider_token_is_retried_and_renewed_once_old_enough(
    apns: ApnsStandIn, provider: ApnsProvider, clock: Clock
) -> None:
    assert isinstance(await provider.send(notification(), target()), Delivered)
    apns.script(TOKEN, reason(403, "ExpiredProviderToken"), reason(403, "ExpiredProviderToken"))
    clock.advance(10 * MINUTE)
    outcome = await provider.send(notification(), target())
    assert isinstance(outcome, Retry)
    assert "ExpiredProviderToken" in outcome.reason
    clock.advance(5 * MINUTE)
    assert isinstance(await provider.send(notification(), target()), Retry)
    clock.advance(6 * MINUTE)  # 21 minutes old: renewed now, not at 40
    assert isinstance(await provider.send(notification(), target()), Delivered)
    jwts = [r.jwt for r in apns.requests]
    assert jwts[0] == jwts[1] == jwts[2] != jwts[3]


async def test_the_stand_in_refuses_foreign_keys(apns: ApnsStandIn) -> None:
    foreign = ProviderToken(ec.generate_private_key(ec.SECP256R1()), KEY_ID, TEAM_ID)
    unknown_kid = ProviderToken(ec.generate_private_key(ec.SECP256R1()), "OTHERKEY", TEAM_ID)
    for token in (foreign, unknown_kid):
        provider = ApnsProvider(token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file)
        outcome = await provider.send(notification(), target())
        await provider.close()
        assert outcome == CredentialsInvalid("403 InvalidProviderToken")


async def test_a_stale_token_is_expired_and_retried(
    apns: ApnsStandIn, clock: Clock, key: ec.EllipticCurvePrivateKey
) -> None:
    two_hours_ago = clock.now - 2 * 3600
    token = ProviderToken(key, KEY_ID, TEAM_ID, clock=lambda: two_hours_ago)
    provider = ApnsProvider(token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file)
    outcome = await provider.send(notification(), target())
    await provider.close()
    assert outcome == Retry("403 ExpiredProviderToken")


SCRIPTED: list[tuple[Scripted, type[Outcome], str, float | None]] = [
    (reason(410, "Unregistered"), TokenInvalid, "410 Unregistered", None),
    (reason(400, "BadDeviceToken"), TokenInvalid, "400 BadDeviceToken", None),
    (reason(400, "DeviceTokenNotForTopic"), TokenInvalid, "400 DeviceTokenNotForTopic", None),
    (reason(403, "InvalidProviderToken"), CredentialsInvalid, "403 InvalidProviderToken", None),
    (reason(400, "TopicDisallowed"), CredentialsInvalid, "400 TopicDisallowed", None),
    (reason(403, "BadCertificate"), CredentialsInvalid, "403 BadCertificate", None),
    (reason(413, "PayloadTooLarge"), Rejected, "413 PayloadTooLarge", None),
    (reason(400, "BadMessageId"), Rejected, "400 BadMessageId", None),
    (reason(429, "TooManyRequests", retry_after=7), Retry, "429 TooManyRequests", 7.0),
    (reason(500, "InternalServerError"), Retry, "500 InternalServerError", None),
    (reason(503, "ServiceUnavailable", retry_after=2.5), Retry, "503 ServiceUnavailable", 2.5),
    (reason(503, "Shutdown"), Retry, "503 Shutdown", None),
    (reason(503, "Shutdown", retry_after=99999999), Retry, "503 Shutdown", MAX_RETRY_AFTER),
    (status(503), Retry, "503 without a reason", None),
    (reason(400, "SomethingNew"), Retry, "unknown APNs answer 400 SomethingNew", None),
    (bare(500), Retry, "500 without a reason", None),
    (bare(400), Retry, "unknown APNs answer 400 without a reason", None),
]


@pytest.mark.parametrize(("scripted", "kind", "why", "after"), SCRIPTED)
async def test_scripted_failures_map_to_outcomes(
    apns: ApnsStandIn,
    provider: ApnsProvider,
    scripted: Scripted,
    kind: type[Outcome],
    why: str,
    after: float | None,
) -> None:
    apns.script(TOKEN, scripted)
    async with asyncio.timeout(2.0):  # well inside the provider's own 5 s: nothing hangs
        outcome = await provider.send(notification(), target())
    assert outcome == (Retry(why, after) if kind is Retry else kind(why))
    assert isinstance(await provider.send(notification(), target()), Delivered)


async def test_answers_without_body_or_apns_id_never_hang(
    apns: ApnsStandIn, clock: Clock, key: ec.EllipticCurvePrivateKey
) -> None:
    # aioapns alone waits forever for both; a short timeout bounds anything that does not end.
    token = ProviderToken(key, KEY_ID, TEAM_ID, clock=clock)
    provider = ApnsProvider(token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file, timeout=0.5)
    apns.script(TOKEN, bare(503), bare(200), slow(30.0, bare(500)))
    try:
        outcomes = [await provider.send(notification(), target()) for _ in range(3)]
    finally:
        await provider.close()
    sent = apns_id("tenant-a", "client-a", "m-1")
    assert outcomes == [
        Retry("503 without a reason"),
        Delivered(sent),
        Retry("no answer from APNs within 0.5 s"),
    ]


async def test_fail_times_then_success(apns: ApnsStandIn, provider: ApnsProvider) -> None:
    apns.script(TOKEN, fail_times(2, 503))
    outcomes = [await provider.send(notification(), target()) for _ in range(3)]
    assert outcomes[:2] == [Retry("503 ServiceUnavailable")] * 2
    assert isinstance(outcomes[2], Delivered)


async def test_stand_in_request_checks(clock: Clock, key: ec.EllipticCurvePrivateKey) -> None:
    async with ApnsStandIn(topics=frozenset({"com.other"}), clock=clock) as apns:
        apns.add_key(KEY_ID, TEAM_ID, key.public_key())
        token = ProviderToken(key, KEY_ID, TEAM_ID, clock=clock)
        provider = ApnsProvider(token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file)
        assert await provider.send(notification(), target()) == CredentialsInvalid(
            "400 TopicDisallowed"
        )
        await provider.close()
        bare_topic = ApnsProvider(token, topic="", url=apns.url, ca_file=apns.ca_file)
        assert await bare_topic.send(notification(), target()) == CredentialsInvalid(
            "400 MissingTopic"
        )
        await bare_topic.close()


async def test_timeout_retries_and_replaces_the_connection(
    apns: ApnsStandIn, clock: Clock, key: ec.EllipticCurvePrivateKey
) -> None:
    token = ProviderToken(key, KEY_ID, TEAM_ID, clock=clock)
    metrics = Registry()
    provider = ApnsProvider(
        token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file, timeout=0.3, metrics=metrics
    )
    try:
        assert isinstance(await provider.send(notification(), target()), Delivered)
        apns.script(TOKEN, slow(30.0))
        assert await provider.send(notification(), target()) == Retry(
            "no answer from APNs within 0.3 s"
        )
        assert isinstance(await provider.send(notification(), target()), Delivered)
    finally:
        await provider.close()
    first, stalled, after = (r.connection for r in apns.requests)
    assert first == stalled != after
    rendered = metrics.render()
    assert "relaypush_apns_connections_opened_total" in rendered
    assert 'relaypush_apns_connections_retired_total{endpoint="' in rendered


async def test_goaway_mid_run_leads_to_a_fresh_connection(
    apns: ApnsStandIn, provider: ApnsProvider
) -> None:
    assert isinstance(await provider.send(notification(), target()), Delivered)
    release = asyncio.Event()
    apns.script(TOKEN, hold(release), hold(release))
    in_flight = [asyncio.create_task(provider.send(notification(), target())) for _ in range(2)]
    await apns.received(3)
    apns.goaway()
    for outcome in await asyncio.gather(*in_flight):
        assert isinstance(outcome, Retry)
        assert "APNs connection failed" in outcome.reason
    later = await asyncio.gather(*(provider.send(notification(), target()) for _ in range(20)))
    assert all(isinstance(o, Delivered) for o in later)
    old = apns.requests[0].connection
    assert all(r.connection != old for r in apns.requests[3:])


async def test_many_concurrent_sends(apns: ApnsStandIn, provider: ApnsProvider) -> None:
    outcomes = await asyncio.gather(
        *(provider.send(notification(message_id=f"m{i}"), target()) for i in range(200))
    )
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len({r.headers["apns-id"] for r in apns.requests}) == 200


async def test_untrusted_server_is_retried(
    apns: ApnsStandIn, key: ec.EllipticCurvePrivateKey
) -> None:
    provider = ApnsProvider(ProviderToken(key, KEY_ID, TEAM_ID), topic=TOPIC, url=apns.url)
    outcome = await provider.send(notification(), target())
    await provider.close()
    assert isinstance(outcome, Retry)
    assert not apns.requests


@pytest.mark.parametrize("form", ["p12", "pem"])
async def test_certificate_mode(tmp_path: Path, form: str) -> None:
    cert = self_signed_client("Apple Push Services: com.example.wallet", user_id=TOPIC)
    cert_file = tmp_path / f"apns.{form}"
    cert_file.write_bytes(cert.p12() if form == "p12" else cert.pem)
    async with ApnsStandIn() as apns:
        settings = Settings(
            apns_topic=TOPIC,
            apns_cert_file=cert_file,
            apns_cert_password=cert.password if form == "p12" else None,
            apns_url=apns.url,
            apns_ca_file=apns.ca_file,
        )
        provider = ApnsProvider.from_settings(settings, sandbox=False)
        assert provider is not None
        outcome = await provider.send(notification(), target())
        await provider.close()
    assert isinstance(outcome, Delivered)
    [record] = apns.requests
    assert "authorization" not in record.headers
    assert record.headers["apns-topic"] == TOPIC


async def test_expired_certificate_is_invalid_credentials() -> None:
    cert = self_signed_client("expired")
    loaded = ApnsCertificate.load(cert.pem)
    late = loaded.not_after.timestamp() + 1
    provider = ApnsProvider(loaded, topic=TOPIC, url="https://127.0.0.1:9", clock=lambda: late)
    outcome = await provider.send(notification(), target())
    assert isinstance(outcome, CredentialsInvalid)


def test_certificate_with_wrong_password_is_a_config_error(tmp_path: Path) -> None:
    cert = self_signed_client("x")
    (tmp_path / "c.p12").write_bytes(cert.p12())
    settings = Settings(
        apns_topic=TOPIC, apns_cert_file=tmp_path / "c.p12", apns_cert_password="wrong"
    )
    with pytest.raises(ConfigError):
        ApnsProvider.from_settings(settings, sandbox=False)


def _key_file(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "AuthKey.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


async def test_sandbox_and_production_reach_their_own_stand_in(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    async with ApnsStandIn() as production, ApnsStandIn() as sandbox:
        for apns in (production, sandbox):
            apns.add_key(KEY_ID, TEAM_ID, key.public_key())
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(production.ca_file.read_bytes() + sandbox.ca_file.read_bytes())
        settings = Settings(
            apns_topic=TOPIC,
            apns_key_file=_key_file(tmp_path, key),
            apns_key_id=KEY_ID,
            apns_team_id=TEAM_ID,
            apns_url=production.url,
            apns_sandbox_url=sandbox.url,
            apns_ca_file=ca_file,
        )
        prod_provider = ApnsProvider.from_settings(settings, sandbox=False)
        sandbox_provider = ApnsProvider.from_settings(settings, sandbox=True)
        assert prod_provider is not None
        assert sandbox_provider is not None
        try:
            prod = await prod_provider.send(notification(message_id="p"), target())
            sand = await sandbox_provider.send(
                notification(message_id="s"), target(provider="apns-sandbox")
            )
        finally:
            await prod_provider.close()
            await sandbox_provider.close()
    assert prod == Delivered(apns_id("tenant-a", "client-a", "p"))
    assert sand == Delivered(apns_id("tenant-a", "client-a", "s"))
    assert [r.headers["apns-id"] for r in production.requests] == [prod.provider_id]
    assert [r.headers["apns-id"] for r in sandbox.requests] == [sand.provider_id]
    assert production.requests[0].jwt == sandbox.requests[0].jwt  # one JWT per key


def test_from_settings_without_apns_is_none(tmp_path: Path) -> None:
    assert ApnsProvider.from_settings(Settings(), sandbox=False) is None
    assert ApnsProvider.from_settings(Settings(apns_topic=TOPIC), sandbox=True) is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"apns_key_id": None},
        {"apns_cert_file": Path("/nonexistent.p12")},
        {"apns_key_file": Path("/nonexistent.p8")},
        {"apns_url": "http://plain.example"},
    ],
)
def test_from_settings_config_errors(
    tmp_path: Path, key: ec.EllipticCurvePrivateKey, overrides: dict[str, object]
) -> None:
    settings = Settings(
        apns_topic=TOPIC,
        apns_key_file=_key_file(tmp_path, key),
        apns_key_id=KEY_ID,
        apns_team_id=TEAM_ID,
    )
    settings = msgspec.structs.replace(settings, **overrides)
    with pytest.raises(ConfigError):
        ApnsProvider.from_settings(settings, sandbox=False)


async def test_more_in_flight_than_the_flow_control_window(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    # 400 bodies of ~330 bytes are twice HTTP/2's initial 65,535-byte connection window.
    async with ApnsStandIn() as apns:
        apns.add_key(KEY_ID, TEAM_ID, key.public_key())
        token = ProviderToken(key, KEY_ID, TEAM_ID)
        provider = ApnsProvider(token, topic=TOPIC, url=apns.url, ca_file=apns.ca_file)
        big = msgspec.structs.replace(notification(), blob="b" * 200)
        try:
            outcomes = await asyncio.gather(*(provider.send(big, target()) for _ in range(400)))
        finally:
            await provider.close()
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len({r.connection for r in apns.requests}) == 1
