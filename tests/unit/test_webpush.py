"""Web Push pieces on their own: RFC 8291's worked example, VAPID tokens, subscription checks,
the allow-list, the outcome table, the message and its size limit, the provider registry's
VAPID credentials, and the tenant fold."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from eventstore import InMemoryEventLog
from relaypush.aggregates import TenantStatuses
from relaypush.config import ConfigError, Settings
from relaypush.delivery.noop import NoopProvider
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Rejected,
    Retry,
    Target,
    TokenInvalid,
)
from relaypush.delivery.registry import Endpoints, ProviderRegistry, Unavailable
from relaypush.delivery.vapid import LIFETIME, RENEW_BEFORE, VapidKey, check_subject
from relaypush.delivery.vapid import key_from_settings as vapid_from_settings
from relaypush.delivery.webpush import STATUSES, WebPushProvider, interpret, request_headers
from relaypush.delivery.webpush_ece import DecryptionError, decrypt, encrypt
from relaypush.domain.credentials import VapidKey as VapidCredential
from relaypush.domain.credentials import fingerprint_of, kind_of
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.events import (
    NotificationAccepted,
    NotifyMessage,
    RawMessage,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    encode_event,
)
from relaypush.domain.payload import parse_register
from relaypush.domain.provider_payload import (
    WEBPUSH_RECORD_OVERHEAD,
    check_payload_size,
    webpush_message,
)
from relaypush.domain.streams import subject_for
from relaypush.domain.tenants import configured_providers, fold
from relaypush.domain.webpush import (
    InvalidSubscription,
    host_allowed,
    is_p256_point,
    parse_subscription,
    topic_for,
)
from relaypush.metrics import Registry
from relaypush.testing.webpush import BrowserSubscription


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# RFC 8291, Appendix A
RFC_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC_UA_PUBLIC = (
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
)
RFC_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC_BODY = (
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS"
    "6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qu"
    "lcy4a-fN"
)


def private(text: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(unb64(text), "big"), ec.SECP256R1())


def test_encryption_reproduces_rfc_8291_appendix_a() -> None:
    body = encrypt(
        RFC_PLAINTEXT,
        unb64(RFC_UA_PUBLIC),
        unb64(RFC_AUTH),
        sender=private(RFC_AS_PRIVATE),
        salt=unb64(RFC_SALT),
    )
    assert b64(body) == RFC_BODY


def test_the_browser_side_decrypts_rfc_8291_appendix_a() -> None:
    assert decrypt(unb64(RFC_BODY), private(RFC_UA_PRIVATE), unb64(RFC_AUTH)) == RFC_PLAINTEXT


def test_a_fresh_message_decrypts_and_a_changed_one_does_not() -> None:
    browser = BrowserSubscription.new("https://push.example/x")
    body = encrypt(b'{"topic":"t"}', browser.p256dh, browser.auth)
    assert browser.decrypt(body) == b'{"topic":"t"}'
    assert encrypt(b"x", browser.p256dh, browser.auth) != encrypt(
        b"x", browser.p256dh, browser.auth
    )
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    with pytest.raises(DecryptionError):
        browser.decrypt(tampered)
    with pytest.raises(DecryptionError):
        decrypt(body, private(RFC_UA_PRIVATE), browser.auth)
    with pytest.raises(DecryptionError):
        browser.decrypt(body[:10])


# -- VAPID ------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verified_claims(header: str) -> tuple[dict[str, object], str]:
    """The claims of a ``vapid t=…, k=…`` header, once its signature verified with ``k``."""
    assert header.startswith("vapid t=")
    token, key = header.removeprefix("vapid t=").split(", k=")
    head, claims, signature = token.split(".")
    assert json.loads(unb64(head)) == {"typ": "JWT", "alg": "ES256"}
    raw = unb64(signature)
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64(key))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(unb64(claims)), key


def test_a_vapid_token_names_the_origin_expiry_and_subject_and_verifies_with_k() -> None:
    clock = Clock(1_000_000.0)
    key = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@example.com", clock=clock)
    claims, k = verified_claims(key.authorization("https://fcm.googleapis.com"))
    assert claims == {
        "aud": "https://fcm.googleapis.com",
        "exp": 1_000_000 + LIFETIME,
        "sub": "mailto:ops@example.com",
    }
    assert k == key.public_key
    assert len(unb64(k)) == 65
    assert LIFETIME <= 24 * 3600


def test_a_vapid_token_is_reused_per_origin_until_it_nears_its_expiry() -> None:
    clock = Clock(1_000_000.0)
    key = VapidKey(ec.generate_private_key(ec.SECP256R1()), "https://example.com", clock=clock)
    first = key.authorization("https://a.example")
    assert key.authorization("https://b.example") != first
    clock.now += LIFETIME - RENEW_BEFORE - 1
    assert key.authorization("https://a.example") == first
    clock.now += 2
    renewed = key.authorization("https://a.example")
    assert renewed != first
    assert verified_claims(renewed)[0]["exp"] == int(clock.now) + LIFETIME


@pytest.mark.parametrize(
    "subject", ["mailto:ops@example.com", "https://example.com", "https://example.com/contact"]
)
def test_subjects_are_mailto_or_https(subject: str) -> None:
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    "subject", ["ops@example.com", "http://example.com", "mailto:", "https://", "mailto:a b@c"]
)
def test_other_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="mailto: or https:"):
        check_subject(subject)


def test_a_vapid_key_is_p256() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="P-256"):
        VapidKey(p384, "mailto:a@b.example")
    with pytest.raises(ValueError, match="not a PEM private key"):
        VapidKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "x")


def test_the_default_tenants_key_comes_from_the_settings(tmp_path: Path) -> None:
    assert vapid_from_settings(Settings()) is None
    path = tmp_path / "vapid.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="RELAYPUSH_VAPID_SUBJECT"):
        vapid_from_settings(Settings(vapid_private_key_file=path))
    with pytest.raises(ConfigError, match="mailto: or https:"):
        vapid_from_settings(Settings(vapid_private_key_file=path, vapid_subject="ops"))
    loaded = vapid_from_settings(
        Settings(vapid_private_key_file=path, vapid_subject="mailto:a@b.example")
    )
    assert loaded is not None
    assert loaded.public_key == VapidKey(key, "mailto:a@b.example").public_key
    with pytest.raises(ConfigError, match="cannot use the VAPID key"):
        vapid_from_settings(
            Settings(
                vapid_private_key_file=path.with_name("missing.pem"), vapid_subject="https://x"
            )
        )


# -- subscriptions ------------------------------------------------------------------------------


def subscription(**changes: object) -> str:
    document: dict[str, object] = {
        "endpoint": "https://fcm.googleapis.com/fcm/send/abc:def",
        "expirationTime": None,
        "keys": {"p256dh": RFC_UA_PUBLIC, "auth": RFC_AUTH},
    }
    document.update(changes)
    return json.dumps(document)


def test_a_browser_subscription_parses() -> None:
    parsed = parse_subscription(subscription())
    assert parsed.p256dh == unb64(RFC_UA_PUBLIC)
    assert parsed.auth == unb64(RFC_AUTH)
    assert parsed.host == "fcm.googleapis.com"
    assert parsed.origin == "https://fcm.googleapis.com"
    padded = {"p256dh": RFC_UA_PUBLIC + "=", "auth": RFC_AUTH + "=="}
    assert parse_subscription(subscription(keys=padded)).auth == unb64(RFC_AUTH)
    assert parse_subscription(subscription(endpoint="https://H.example:443/p")).origin == (
        "https://h.example"
    )
    assert parse_subscription(subscription(endpoint="https://[::1]:8443/p")).origin == (
        "https://[::1]:8443"
    )


def off_curve_point() -> str:
    point = bytearray(unb64(RFC_UA_PUBLIC))
    point[-1] ^= 1
    return b64(bytes(point))


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("[]", "PushSubscription as JSON"),
        ("{", "PushSubscription as JSON"),
        (subscription(endpoint=None), "endpoint is required"),
        (subscription(endpoint="http://fcm.googleapis.com/x"), "https URL"),
        (subscription(endpoint="https:///x"), "https URL"),
        (subscription(endpoint="https://user:pw@fcm.googleapis.com/x"), "https URL"),
        (subscription(endpoint="https://fcm.googleapis.com:99999/x"), "not a URL"),
        (subscription(keys=None), "keys is required"),
        (subscription(keys={"auth": RFC_AUTH}), "keys.p256dh must be base64url"),
        (subscription(keys={"p256dh": "a+b/", "auth": RFC_AUTH}), "keys.p256dh must be base64url"),
        (subscription(keys={"p256dh": RFC_AUTH, "auth": RFC_AUTH}), "P-256 public key"),
        (subscription(keys={"p256dh": off_curve_point(), "auth": RFC_AUTH}), "P-256 public key"),
        (subscription(keys={"p256dh": RFC_UA_PUBLIC, "auth": 16}), "keys.auth must be base64url"),
        (subscription(keys={"p256dh": RFC_UA_PUBLIC, "auth": "AAAA"}), "keys.auth must be 16"),
        (subscription(pad="x" * 2048), "at most 2048 bytes"),
    ],
)
def test_malformed_subscriptions_say_why(token: str, says: str) -> None:
    with pytest.raises(InvalidSubscription, match=says):
        parse_subscription(token)


def test_the_p256_check_is_the_curve_equation() -> None:
    point = unb64(RFC_UA_PUBLIC)
    assert is_p256_point(point)
    for _ in range(20):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        assert is_p256_point(
            key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
    assert not is_p256_point(unb64(off_curve_point()))
    assert not is_p256_point(b"\x03" + point[1:])
    assert not is_p256_point(point[:33])
    assert not is_p256_point(b"\x04" + b"\xff" * 64)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("fcm.googleapis.com", True),
        ("FCM.googleapis.com", True),
        ("fcm.googleapis.com.", True),
        ("db5p.notify.windows.com", True),
        ("notify.windows.com", False),
        ("evilnotify.windows.com", False),
        ("fcm.googleapis.com.evil.example", False),
        ("127.0.0.1", False),
        ("", False),
    ],
)
def test_the_allow_list_takes_names_and_wildcards(host: str, allowed: bool) -> None:
    hosts = ("fcm.googleapis.com", "*.notify.windows.com")
    assert host_allowed(host, hosts) is allowed


def test_registration_checks_a_webpush_token_against_the_hosts() -> None:
    body = json.dumps({"client_id": "w1", "type": "webpush", "token": subscription()}).encode()
    assert parse_register(body, webpush_hosts=("fcm.googleapis.com",)).provider == "webpush"
    with pytest.raises(InvalidRequest) as info:
        parse_register(body)
    (field,) = info.value.fields
    assert field.field == "token"
    assert "(none is allowed)" in field.description
    with pytest.raises(InvalidRequest) as info:
        parse_register(body, webpush_hosts=("updates.push.services.mozilla.com",))
    assert "'fcm.googleapis.com' is not an allowed push service" in info.value.fields[0].description
    # other types' tokens are not subscriptions
    fcm = json.dumps({"client_id": "w1", "type": "fcm", "token": "not json"}).encode()
    assert parse_register(fcm).token == "not json"


def test_an_over_long_token_is_named_once() -> None:
    body = json.dumps({"client_id": "w1", "type": "webpush", "token": "x" * 5000}).encode()
    with pytest.raises(InvalidRequest) as info:
        parse_register(body, webpush_hosts=("fcm.googleapis.com",))
    assert [f.field for f in info.value.fields] == ["token"]


def test_topics_fit_the_header() -> None:
    assert topic_for("order-42") == "order-42"
    long = topic_for("a collapse id with spaces and more than thirty-two characters")
    assert len(long) == 32
    assert long == topic_for("a collapse id with spaces and more than thirty-two characters")
    assert request_headers("vapid t=x, k=y", 30, collapse_id="order-42")["topic"] == "order-42"
    assert "topic" not in request_headers("vapid t=x, k=y", 30)
    assert request_headers("vapid t=x, k=y", -5)["ttl"] == "0"


# -- the outcome table --------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (201, Delivered),
        (200, Delivered),
        (202, Delivered),
        (404, TokenInvalid),
        (410, TokenInvalid),
        (413, Rejected),
        (400, Rejected),
        (401, Rejected),
        (403, Rejected),
        (301, Rejected),
        (307, Rejected),
        (429, Retry),
        (500, Retry),
        (503, Retry),
        (505, Retry),
        (418, Retry),
    ],
)
def test_each_push_service_status_has_its_outcome(status: int, kind: type) -> None:
    assert isinstance(interpret(status, {}, b"", now=NOW), kind)


def test_retries_carry_retry_after_and_unknown_answers_say_so() -> None:
    outcome = interpret(429, {"retry-after": "7"}, b"", now=NOW)
    assert outcome == Retry("429 Too Many Requests", 7.0)
    dated = interpret(503, {"retry-after": "Thu, 01 Jan 2026 00:00:30 GMT"}, b"", now=NOW)
    assert dated == Retry("503 Service Unavailable", 30.0)
    unknown = interpret(418, {}, b"", now=NOW)
    assert isinstance(unknown, Retry)
    assert unknown.reason.startswith("unknown answer 418")


def test_refusals_keep_the_push_services_words_and_redirects_say_why() -> None:
    outcome = interpret(403, {}, b"the key does not match\n", now=NOW)
    assert outcome == Rejected("403 Forbidden: the key does not match")
    assert interpret(302, {"location": "https://x"}, b"", now=NOW) == Rejected(
        "302 Found: redirects are not followed"
    )
    delivered = interpret(201, {"location": "https://push.example/m/1"}, b"", now=NOW)
    assert isinstance(delivered, Delivered)
    assert delivered.provider_id is not None
    assert delivered.provider_id.startswith("sha256:")
    assert "push.example" not in delivered.provider_id
    assert set(STATUSES.values()) == {Delivered, TokenInvalid, Rejected, Retry}


# -- the message and its size -------------------------------------------------------------------


def accepted(**fields: object) -> NotificationAccepted:
    values: dict[str, object] = {
        "event_id": "e",
        "occurred_at": NOW,
        "tenant_id": "t",
        "client_id": "c",
        "message_id": "m",
        "dedup_key": "k",
        "topic": "t0",
        "flags": 17,
        "encrypted": True,
        "blob": "YQ==",
    }
    values.update(fields)
    return msgspec.convert(values, NotificationAccepted)


def test_the_message_is_the_fcm_data_plus_the_notify_fields() -> None:
    assert json.loads(webpush_message(accepted())) == {"topic": "t0", "flags": "17", "blob": "YQ=="}
    clear = accepted(
        flags=16,
        encrypted=False,
        notify=NotifyMessage(title="Hi", body="Hello", type="promo"),
    )
    assert json.loads(webpush_message(clear)) == {
        "topic": "t0",
        "flags": "16",
        "blob": "YQ==",
        "title": "Hi",
        "body": "Hello",
        "type": "promo",
    }
    raw = accepted(raw=RawMessage(topic="t2", tag=4100, message="m"), blob=None)
    assert json.loads(webpush_message(raw)) == {"topic": "t2", "tag": "4100", "message": "m"}


def test_the_size_check_counts_the_encrypted_record() -> None:
    empty = len(webpush_message(accepted(blob="")))
    fits = 4096 - WEBPUSH_RECORD_OVERHEAD - empty
    check_payload_size(accepted(blob="A" * fits), "webpush")
    with pytest.raises(InvalidRequest) as info:
        check_payload_size(accepted(blob="A" * (fits + 1)), "webpush")
    assert info.value.errors[0].name == "payload_too_large"
    browser = BrowserSubscription.new("https://push.example/x")
    body = encrypt(webpush_message(accepted(blob="A" * fits)), browser.p256dh, browser.auth)
    assert len(body) == 4096


# -- tenants' VAPID credentials -----------------------------------------------------------------


def vapid_credential(pem: str | None = None) -> VapidCredential:
    key = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:a@b.example")
    return VapidCredential(
        private_key_pem=pem or key.private_pem(),
        subject="mailto:a@b.example",
        public_key=key.public_key,
    )


def test_a_vapid_credential_is_its_own_kind_and_its_repr_hides_the_key() -> None:
    credential = vapid_credential()
    assert kind_of(credential) == "webpush"
    assert "PRIVATE" not in repr(credential)
    assert credential.public_key in repr(credential)


def test_the_tenant_fold_follows_vapid_credentials() -> None:
    changed = TenantCredentialsChanged(
        event_id="1",
        occurred_at=NOW,
        tenant_id="t",
        kind="webpush",
        fingerprint="sha256:ab",
        vapid_public_key="BPUB",
    )
    created = TenantCreated(event_id="0", occurred_at=NOW, tenant_id="t")
    state = fold([(1, created), (2, changed)])
    assert configured_providers(state) == ("webpush",)
    assert state.fingerprint("webpush") == "sha256:ab"
    assert state.webpush is not None
    assert state.webpush.public_key == "BPUB"
    removed = TenantCredentialsRemoved(event_id="2", occurred_at=NOW, tenant_id="t", kind="webpush")
    assert fold([(3, removed)], state=state).webpush is None


async def registry_with(credential: VapidCredential) -> ProviderRegistry:
    log = InMemoryEventLog()

    async def append(event: TenantCreated | TenantCredentialsChanged) -> None:
        await log.append(subject_for(event), encode_event(event))

    class Store:
        async def load(self, tenant_id: str, kind: str, fingerprint: str) -> VapidCredential:
            assert (tenant_id, kind, fingerprint) == ("t", "webpush", fingerprint_of(credential))
            return credential

    await append(TenantCreated(event_id="0", occurred_at=NOW, tenant_id="t"))
    await append(
        TenantCredentialsChanged(
            event_id=uuid.uuid4().hex,
            occurred_at=NOW,
            tenant_id="t",
            kind="webpush",
            fingerprint=fingerprint_of(credential),
            vapid_public_key=credential.public_key,
        )
    )
    return ProviderRegistry(
        tenants=TenantStatuses(log, ttl=0.0),
        credentials=Store(),
        endpoints=Endpoints(webpush_hosts=("127.0.0.1",)),
        default={"noop": NoopProvider()},
        retire_after=0.0,
        metrics=Registry(),
    )


async def test_the_registry_builds_a_webpush_provider_from_the_tenants_key() -> None:
    credential = vapid_credential()
    registry = await registry_with(credential)
    provider = await registry.lookup("t", "webpush")
    assert isinstance(provider, WebPushProvider)
    assert provider.key.public_key == credential.public_key
    assert await registry.lookup("t", "fcm") == Unavailable("provider_not_configured")
    await registry.close()


async def test_an_unusable_stored_vapid_key_suspends_like_a_refusal() -> None:
    registry = await registry_with(vapid_credential(pem="garbage"))
    provider = await registry.lookup("t", "webpush")
    assert not isinstance(provider, Unavailable)
    outcome = await provider.send(accepted(), Target("t", "c", "webpush", subscription()))
    assert isinstance(outcome, CredentialsInvalid)


async def test_the_provider_never_fetches_what_is_not_allowed_or_not_a_subscription() -> None:
    key = VapidKey(ec.generate_private_key(ec.SECP256R1()), "mailto:a@b.example")
    provider = WebPushProvider(
        key, hosts=("updates.push.services.mozilla.com",), metrics=Registry()
    )
    outcome = await provider.send(accepted(), Target("t", "c", "webpush", subscription()))
    assert outcome == Rejected(
        "endpoint_not_allowed: 'fcm.googleapis.com' is not in the allow-list"
    )
    dead = await provider.send(accepted(), Target("t", "c", "webpush", "not json"))
    assert isinstance(dead, TokenInvalid)
    await provider.close()
