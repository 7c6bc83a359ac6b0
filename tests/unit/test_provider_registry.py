"""The per-tenant provider lookup: default tenant from settings, other tenants built from their
stored credentials by fingerprint, and what the dispatcher records when there is no provider."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eventstore import InMemoryEventLog
from relaypush.aggregates import TenantStatuses
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.noop import NoopProvider
from relaypush.delivery.outcomes import CredentialsInvalid, Target
from relaypush.delivery.registry import (
    Endpoints,
    ProviderRegistry,
    StaticProviders,
    Unavailable,
    token_host_allowed,
)
from relaypush.domain.credentials import (
    ApnsTokenKey,
    Credential,
    FcmServiceAccount,
    fingerprint_of,
    kind_of,
)
from relaypush.domain.events import (
    AnyEvent,
    ClientRegistered,
    CredentialKind,
    Event,
    NotificationAccepted,
    NotificationDeliveryFailed,
    ProviderType,
    TenantCreated,
    TenantCredentialsChanged,
    TenantDeleted,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import dedup_key, subject_for
from relaypush.metrics import Registry
from relaypush.testing.oauth import ServiceAccount

T = "acme"


def now() -> datetime:
    return datetime.now(UTC)


def p8() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def apns_key(topic: str = "com.example.app") -> ApnsTokenKey:
    return ApnsTokenKey(topic=topic, key_id="KEY1234567", team_id="TEAM123456", pkcs8_pem=p8())


def service_account(token_uri: str = "https://oauth2.googleapis.com/token") -> FcmServiceAccount:
    info = ServiceAccount.generate("proj-a").info(token_uri)
    return FcmServiceAccount(project_id="proj-a", document=json.dumps(info))


class MemoryCredentials:
    """Credentials by (tenant, kind, fingerprint); ``failing`` makes every load raise."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str, str], Credential] = {}
        self.failing: Exception | None = None
        self.loads = 0

    def put(self, tenant_id: str, credential: Credential) -> str:
        fingerprint = fingerprint_of(credential)
        self.stored[(tenant_id, kind_of(credential), fingerprint)] = credential
        return fingerprint

    async def load(
        self, tenant_id: str, kind: CredentialKind, fingerprint: str
    ) -> Credential | None:
        self.loads += 1
        if self.failing is not None:
            raise self.failing
        return self.stored.get((tenant_id, kind, fingerprint))


async def append(log: InMemoryEventLog, event: Event) -> None:
    await log.append(subject_for(event), encode_event(event))


async def set_credentials(
    log: InMemoryEventLog, store: MemoryCredentials, credential: Credential
) -> None:
    fingerprint = store.put(T, credential)
    await append(
        log,
        TenantCredentialsChanged(
            event_id=uuid.uuid4().hex,
            occurred_at=now(),
            tenant_id=T,
            kind=kind_of(credential),
            fingerprint=fingerprint,
        ),
    )


class Env:
    def __init__(self) -> None:
        self.log = InMemoryEventLog()
        self.store = MemoryCredentials()
        self.noop = NoopProvider()
        self.registry = ProviderRegistry(
            tenants=TenantStatuses(self.log, ttl=0.0),
            credentials=self.store,
            endpoints=Endpoints(apns_sandbox_url="https://sandbox.example:2197"),
            default={"noop": self.noop},
            retire_after=0.0,
            metrics=Registry(),
        )


@pytest.fixture(name="env")
async def fx_env() -> Env:
    env = Env()
    await append(env.log, TenantCreated(event_id="c", occurred_at=now(), tenant_id=T))
    return env


async def test_the_default_tenant_uses_the_settings_providers(env: Env) -> None:
    assert await env.registry.lookup("0000-0000-0000-0000", "noop") is env.noop
    assert await env.registry.lookup("0000-0000-0000-0000", "apns") == Unavailable(
        "provider_not_configured"
    )


async def test_unknown_and_deleted_tenants_have_no_provider(env: Env) -> None:
    assert await env.registry.lookup("nobody", "noop") == Unavailable("tenant_unknown")
    await append(env.log, TenantDeleted(event_id="d", occurred_at=now(), tenant_id=T))
    assert await env.registry.lookup(T, "noop") == Unavailable("tenant_deleted")


async def test_a_tenant_without_credentials_has_noop_only(env: Env) -> None:
    assert await env.registry.lookup(T, "noop") is env.noop
    kinds: tuple[ProviderType, ...] = ("apns", "apns-sandbox", "fcm")
    for kind in kinds:
        assert await env.registry.lookup(T, kind) == Unavailable("provider_not_configured")


async def test_providers_are_built_once_per_fingerprint_and_replaced_on_change(env: Env) -> None:
    await set_credentials(env.log, env.store, apns_key())
    production = await env.registry.lookup(T, "apns")
    sandbox = await env.registry.lookup(T, "apns-sandbox")
    assert isinstance(production, ApnsProvider)
    assert isinstance(sandbox, ApnsProvider)
    assert production.topic == "com.example.app"
    assert production.endpoint.host == "api.push.apple.com"
    assert sandbox.endpoint.host == "sandbox.example"
    assert await env.registry.lookup(T, "apns") is production
    assert env.store.loads == 2
    await set_credentials(env.log, env.store, apns_key("com.example.next"))
    replaced = await env.registry.lookup(T, "apns")
    assert isinstance(replaced, ApnsProvider)
    assert replaced is not production
    assert replaced.topic == "com.example.next"
    await env.registry.close()


async def test_fcm_providers_come_from_the_service_account(env: Env) -> None:
    await set_credentials(env.log, env.store, service_account())
    provider = await env.registry.lookup(T, "fcm")
    assert isinstance(provider, FcmProvider)
    assert provider.project_id == "proj-a"
    await env.registry.close()


async def test_credentials_that_cannot_be_had_are_retried(env: Env) -> None:
    await set_credentials(env.log, env.store, apns_key())
    env.store.failing = RuntimeError("store down")
    found = await env.registry.lookup(T, "apns")
    assert isinstance(found, Unavailable)
    assert not found.permanent
    env.store.failing = None
    env.store.stored.clear()
    missing = await env.registry.lookup(T, "apns")
    assert isinstance(missing, Unavailable)
    assert not missing.permanent


@pytest.mark.parametrize(
    "credential",
    [
        ApnsTokenKey(topic="t", key_id="KEY1234567", team_id="TEAM123456", pkcs8_pem="garbage"),
        service_account("https://169.254.169.254/token"),
    ],
)
async def test_unusable_stored_credentials_suspend_like_a_refusal(
    env: Env, credential: Credential
) -> None:
    await set_credentials(env.log, env.store, credential)
    kind: ProviderType = "fcm" if isinstance(credential, FcmServiceAccount) else "apns"
    provider = await env.registry.lookup(T, kind)
    assert not isinstance(provider, Unavailable)
    accepted = NotificationAccepted(
        event_id="a",
        occurred_at=now(),
        tenant_id=T,
        client_id="c",
        message_id="m",
        dedup_key="k",
        topic="t",
    )
    outcome = await provider.send(accepted, Target(T, "c", kind, "tok"))
    assert isinstance(outcome, CredentialsInvalid)


def test_token_hosts_are_https_and_listed() -> None:
    hosts = ("oauth2.googleapis.com",)
    assert token_host_allowed("https://oauth2.googleapis.com/token", hosts)
    assert token_host_allowed("https://OAUTH2.googleapis.com:443/token", hosts)
    assert not token_host_allowed("http://oauth2.googleapis.com/token", hosts)
    assert not token_host_allowed("https://oauth2.googleapis.com.evil.net/token", hosts)
    assert not token_host_allowed("https://127.0.0.1/token", hosts)


async def test_a_plain_mapping_serves_every_tenant() -> None:
    noop = NoopProvider()
    static = StaticProviders({"noop": noop})
    assert await static.lookup("any", "noop") is noop
    assert await static.lookup("any", "fcm") == Unavailable("provider_not_configured")


# what the dispatcher records


async def events(log: InMemoryEventLog) -> list[AnyEvent]:
    return [decode_event(e.data) async for e in log.read()]


async def until(log: InMemoryEventLog, what: Callable[[list[AnyEvent]], bool]) -> list[AnyEvent]:
    for _ in range(500):
        seen = await events(log)
        if what(seen):
            return seen
        await asyncio.sleep(0.01)
    raise AssertionError(await events(log))


async def test_the_dispatcher_retries_what_is_unavailable_and_stops_for_a_deleted_tenant(
    env: Env,
) -> None:
    await set_credentials(env.log, env.store, apns_key())
    env.store.failing = RuntimeError("store down")
    await append(
        env.log,
        ClientRegistered(
            event_id="r",
            occurred_at=now(),
            tenant_id=T,
            client_id="c",
            provider="apns",
            token="a" * 64,
        ),
    )
    dispatcher = Dispatcher(
        env.log, env.registry, deadline=60.0, retry_base=0.01, retry_cap=0.05, metrics=Registry()
    )
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    accepted = NotificationAccepted(
        event_id="a",
        occurred_at=now(),
        tenant_id=T,
        client_id="c",
        message_id="m",
        dedup_key=dedup_key(T, "c", "m"),
        topic="t",
        flags=1,
        encrypted=True,
        blob="YQ==",
    )
    await env.log.append(subject_for(accepted), encode_event(accepted), expected_version=0)
    seen = await until(
        env.log, lambda ev: any(isinstance(e, NotificationDeliveryFailed) for e in ev)
    )
    first = next(e for e in seen if isinstance(e, NotificationDeliveryFailed))
    assert not first.permanent
    assert first.reason.startswith("credentials_unavailable")
    await append(env.log, TenantDeleted(event_id="d", occurred_at=now(), tenant_id=T))
    seen = await until(
        env.log,
        lambda ev: any(isinstance(e, NotificationDeliveryFailed) and e.permanent for e in ev),
    )
    final = [e for e in seen if isinstance(e, NotificationDeliveryFailed)][-1]
    assert final.reason == "tenant_deleted"
    stop.set()
    await task
    await env.registry.close()
