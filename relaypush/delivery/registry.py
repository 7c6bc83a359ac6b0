"""Which provider delivers for a tenant and client type: the dispatcher's one provider lookup.

The default tenant uses the providers built from the settings (``RELAYPUSH_APNS_*``,
``RELAYPUSH_FCM_*``, ``RELAYPUSH_VAPID_*``). Any other tenant's providers are built on first use
from its credentials: the tenant's events (read through
:class:`~relaypush.aggregates.TenantStatuses`, at most a second old) name the fingerprint of its
current APNs, FCM and VAPID credentials, the credential store hands
back the unsealed credentials of that fingerprint, and the provider is cached under (tenant,
client type) with its fingerprint. New credentials make a new provider; the old one is closed once
the sends it may still be serving had time to finish. ``noop`` is the same for every tenant.

A lookup answers a provider, or :class:`Unavailable` with a reason: permanent for a tenant that is
deleted or unknown, or a type it has no credentials for; not permanent when the credentials
cannot be had right now (store down, sealed under a key that is not configured), so the
dispatcher retries until the delivery deadline. Stored credentials that no longer make a
provider (a certificate that stopped parsing, a token host no longer allowed) give a provider
that answers :class:`~relaypush.delivery.outcomes.CredentialsInvalid`, which suspends the tenant
until its credentials change, as a refusal by Apple or Google would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

import structlog

from eventstore import EventLog
from relaypush.aggregates import TenantStatuses
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.apns_auth import ApnsCertificate, ProviderToken
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.outcomes import CredentialsInvalid, Outcome, Provider, Target
from relaypush.delivery.vapid import VapidKey
from relaypush.delivery.webpush import WebPushProvider
from relaypush.domain.credentials import (
    ApnsCertificateFile,
    ApnsTokenKey,
    Credential,
    FcmServiceAccount,
)
from relaypush.domain.credentials import VapidKey as VapidCredential
from relaypush.domain.events import CredentialKind, NotificationAccepted, ProviderType
from relaypush.domain.tenants import CREDENTIAL_KIND
from relaypush.metrics import REGISTRY, Registry

__all__ = [
    "CredentialSource",
    "Endpoints",
    "ProviderLookup",
    "ProviderRegistry",
    "StaticProviders",
    "Unavailable",
    "as_lookup",
    "token_host_allowed",
]

log = structlog.get_logger(__name__)

#: Seconds a replaced provider is kept open for the sends it may still be serving, per send timeout.
RETIRE_AFTER_TIMEOUTS: Final = 3.0


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No provider for this send: ``reason`` is recorded; ``permanent`` fails the notification,
    otherwise it is retried (until the deadline)."""

    reason: str
    permanent: bool = True


class ProviderLookup(Protocol):
    """The provider for a tenant's client type, or why there is none."""

    async def lookup(self, tenant_id: str, client_type: ProviderType) -> Provider | Unavailable: ...


class StaticProviders:
    """One set of providers for every tenant: the single-tenant set-up."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = providers

    async def lookup(self, tenant_id: str, client_type: ProviderType) -> Provider | Unavailable:
        provider = self._providers.get(client_type)
        return provider if provider is not None else Unavailable("provider_not_configured")


def as_lookup(providers: ProviderLookup | Mapping[str, Provider]) -> ProviderLookup:
    """A lookup from either a lookup or a plain mapping of client type to provider."""
    if isinstance(providers, Mapping):
        return StaticProviders(providers)
    return providers


class CredentialSource(Protocol):
    """Unsealed tenant credentials by (tenant, kind, fingerprint); None when not stored."""

    async def load(
        self, tenant_id: str, kind: CredentialKind, fingerprint: str
    ) -> Credential | None: ...


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where tenants' providers connect, and the token hosts a service account may name."""

    apns_url: str = "https://api.push.apple.com"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com"
    apns_ca_file: Path | None = None
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_ca_file: Path | None = None
    fcm_token_hosts: tuple[str, ...] = ("oauth2.googleapis.com",)
    webpush_hosts: tuple[str, ...] = ()
    webpush_ca_file: Path | None = None
    delivery_deadline: float = 86400.0
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        return cls(
            apns_url=settings.apns_url,
            apns_sandbox_url=settings.apns_sandbox_url,
            apns_ca_file=settings.apns_ca_file,
            fcm_url=settings.fcm_url,
            fcm_ca_file=settings.fcm_ca_file,
            fcm_token_hosts=settings.fcm_token_hosts,
            webpush_hosts=settings.webpush_hosts,
            webpush_ca_file=settings.webpush_ca_file,
            delivery_deadline=settings.delivery_deadline,
            timeout=settings.send_timeout,
        )


def token_host_allowed(token_uri: str, hosts: Iterable[str]) -> bool:
    """Whether ``token_uri`` is an https URL on one of ``hosts`` (compared case-insensitively)."""
    parts = urlsplit(token_uri)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and bool(host) and host in {h.lower() for h in hosts}


class _Refusing:
    """A provider for credentials that cannot be used: every send answers ``outcome``."""

    def __init__(self, outcome: Outcome) -> None:
        self._outcome = outcome

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        return self._outcome

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Held:
    fingerprint: str
    provider: Provider


class ProviderRegistry:
    """Providers per (tenant, client type), built from sealed credentials and cached."""

    def __init__(
        self,
        *,
        tenants: TenantStatuses,
        credentials: CredentialSource | None,
        endpoints: Endpoints,
        default: Mapping[str, Provider],
        default_tenant: str = DEFAULT_TENANT,
        retire_after: float | None = None,
        metrics: Registry = REGISTRY,
    ) -> None:
        """``default`` serves the default tenant (and ``noop`` for all); the caller closes it."""
        self._tenants = tenants
        self._credentials = credentials
        self._endpoints = endpoints
        self._default = default
        self._default_tenant = default_tenant
        self._retire_after = (
            retire_after if retire_after is not None else endpoints.timeout * RETIRE_AFTER_TIMEOUTS
        )
        self._metrics = metrics
        self._held: dict[tuple[str, ProviderType], _Held] = {}
        self._building: dict[tuple[str, ProviderType], asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._built = metrics.counter(
            "relaypush_tenant_providers_built_total",
            "Providers built from tenants' stored credentials, by client type",
            ("provider",),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        event_log: EventLog,
        *,
        default: Mapping[str, Provider],
        credentials: CredentialSource | None,
        metrics: Registry = REGISTRY,
        tenants: TenantStatuses | None = None,
    ) -> ProviderRegistry:
        """A registry reading tenants from ``event_log`` (through ``tenants``, the process's
        tenant cache, when given) and credentials from ``credentials``."""
        return cls(
            tenants=tenants or TenantStatuses(event_log),
            credentials=credentials,
            endpoints=Endpoints.from_settings(settings),
            default=default,
            metrics=metrics,
        )

    async def lookup(self, tenant_id: str, client_type: ProviderType) -> Provider | Unavailable:
        if tenant_id == self._default_tenant:
            return self._static(client_type)
        state = await self._tenants.get(tenant_id)
        if not state.exists:
            self._forget(tenant_id)
            return Unavailable("tenant_deleted" if state.deleted else "tenant_unknown")
        if client_type == "noop":
            return self._static(client_type)
        kind = CREDENTIAL_KIND[client_type]
        fingerprint = state.fingerprint(kind)
        if fingerprint is None:
            return Unavailable("provider_not_configured")
        key = (tenant_id, client_type)
        held = self._held.get(key)
        if held is not None and held.fingerprint == fingerprint:
            return held.provider
        # one build at a time per tenant and type: a slow or absent credential store never
        # holds up the providers of other tenants, nor those already built
        building = self._building.setdefault(key, asyncio.Lock())
        async with building:
            held = self._held.get(key)
            if held is not None and held.fingerprint == fingerprint:
                return held.provider
            built = await self._build(tenant_id, client_type, kind, fingerprint)
            if isinstance(built, Unavailable):
                return built
            self._held[key] = _Held(fingerprint, built)
            if held is not None:
                self._retire(held.provider)
            return built

    async def close(self) -> None:
        """Close every provider this registry built (not the default ones)."""
        held, self._held = list(self._held.values()), {}
        for task in list(self._retiring):
            task.cancel()
        for entry in held:
            await entry.provider.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _static(self, client_type: ProviderType) -> Provider | Unavailable:
        provider = self._default.get(client_type)
        return provider if provider is not None else Unavailable("provider_not_configured")

    async def _build(
        self, tenant_id: str, client_type: ProviderType, kind: CredentialKind, fingerprint: str
    ) -> Provider | Unavailable:
        if self._credentials is None:
            return Unavailable("credentials_unavailable: no credential store", permanent=False)
        try:
            async with asyncio.timeout(self._endpoints.timeout):
                credential = await self._credentials.load(tenant_id, kind, fingerprint)
        except Exception as exc:  # store down or slow, key missing: retried until the deadline
            log.error(
                "tenant_credentials_unavailable",
                tenant_id=tenant_id,
                kind=kind,
                fingerprint=fingerprint,
                error=str(exc),
            )
            return Unavailable(f"credentials_unavailable: {exc}", permanent=False)
        if credential is None:
            log.error(
                "tenant_credentials_missing",
                tenant_id=tenant_id,
                kind=kind,
                fingerprint=fingerprint,
            )
            return Unavailable("credentials_unavailable: not in the store", permanent=False)
        try:
            provider = self._make(credential, client_type)
        except ValueError as exc:
            log.warning(
                "tenant_credentials_unusable", tenant_id=tenant_id, kind=kind, error=str(exc)
            )
            provider = _Refusing(CredentialsInvalid(f"stored credentials unusable: {exc}"))
        self._built.inc(provider=client_type)
        log.info(
            "tenant_provider_built",
            tenant_id=tenant_id,
            provider=client_type,
            fingerprint=fingerprint,
        )
        return provider

    def _make(self, credential: Credential, client_type: ProviderType) -> Provider:
        """A provider for ``credential``; ``ValueError`` when it cannot make one."""
        endpoints = self._endpoints
        match credential:
            case FcmServiceAccount():
                if client_type != "fcm":
                    raise ValueError(f"FCM credentials cannot serve {client_type!r} clients")
                info = json.loads(credential.document)
                if not isinstance(info, dict):
                    raise ValueError("the service account is not a JSON object")
                if not token_host_allowed(
                    str(info.get("token_uri", "")), endpoints.fcm_token_hosts
                ):
                    raise ValueError("the service account's token_uri is not an allowed host")
                return FcmProvider.from_service_account(
                    info,
                    base_url=endpoints.fcm_url,
                    verify=endpoints.fcm_ca_file,
                    timeout=endpoints.timeout,
                    metrics=self._metrics,
                )
            case VapidCredential():
                if client_type != "webpush":
                    raise ValueError(f"a VAPID key cannot serve {client_type!r} clients")
                key = VapidKey.from_pem(credential.private_key_pem.encode(), credential.subject)
                try:
                    return WebPushProvider(
                        key,
                        hosts=endpoints.webpush_hosts,
                        verify=endpoints.webpush_ca_file,
                        ttl=endpoints.delivery_deadline,
                        timeout=endpoints.timeout,
                        metrics=self._metrics,
                    )
                except OSError as exc:
                    raise ValueError(f"cannot set up TLS for Web Push: {exc}") from exc
            case ApnsTokenKey() | ApnsCertificateFile():
                if client_type not in ("apns", "apns-sandbox"):
                    raise ValueError(f"APNs credentials cannot serve {client_type!r} clients")
                auth: ProviderToken | ApnsCertificate
                if isinstance(credential, ApnsTokenKey):
                    auth = ProviderToken.shared(
                        credential.pkcs8_pem.encode(), credential.key_id, credential.team_id
                    )
                else:
                    auth = ApnsCertificate.load(credential.p12, credential.password)
                sandbox = client_type == "apns-sandbox"
                try:
                    return ApnsProvider(
                        auth,
                        topic=credential.topic,
                        url=endpoints.apns_sandbox_url if sandbox else endpoints.apns_url,
                        ca_file=endpoints.apns_ca_file,
                        timeout=endpoints.timeout,
                        metrics=self._metrics,
                    )
                except OSError as exc:
                    raise ValueError(f"cannot set up TLS for APNs: {exc}") from exc

    def _forget(self, tenant_id: str) -> None:
        for key in [k for k in self._held if k[0] == tenant_id]:
            self._retire(self._held.pop(key).provider)

    def _retire(self, provider: Provider) -> None:
        task = asyncio.create_task(self._close_later(provider))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_later(self, provider: Provider) -> None:
        try:
            await asyncio.sleep(self._retire_after)  # sends under way on it may still finish
        finally:
            with contextlib.suppress(Exception):
                await provider.close()
