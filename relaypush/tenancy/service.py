"""Tenant management: create, read and delete tenants, set and remove their credentials.

Every decision is taken on the tenant's events, read afresh from the log (read-your-writes,
whichever API process served the previous request), and recorded by appending at the version
read; losing a race to another writer means reading again and deciding again. After an append the
shared :class:`~relaypush.aggregates.TenantStatuses` is told the new state, so this process's
push path sees a deletion or a lifted suspension at once (other processes within a second).

Credentials are checked first (:mod:`relaypush.tenancy.checks`), then sealed and stored, and only
then does the event naming their fingerprint go into the log: whoever reads that event finds the
credential in the store. Removing credentials or deleting the tenant appends first and deletes
the stored rows after. The default tenant always exists and takes its credentials from the
settings: it can be read but not deleted, and its credentials cannot be uploaded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol

from eventstore import ANY, EventLog, WrongExpectedVersion
from relaypush.aggregates import TenantStatuses
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.delivery.vapid import key_from_settings
from relaypush.domain.credentials import (
    Credential,
    VapidKey,
    apns_type_of,
    fingerprint_of,
    kind_of,
)
from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.domain.events import (
    ApnsType,
    CredentialKind,
    Event,
    ProviderType,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import TENANT, subject_for
from relaypush.domain.tenants import (
    ADMIN,
    TENANT_EVENT_TYPES,
    Caller,
    CredentialChange,
    TenantEvent,
    TenantNotFound,
    TenantState,
    configured_providers,
    decide_create,
    decide_credentials,
    decide_delete,
    decide_remove,
    decide_unsuspend,
    evolve,
)
from relaypush.tenancy.checks import ApnsForm, CredentialChecker
from relaypush.tenancy.errors import CredentialStorageNotConfigured

__all__ = [
    "MAX_ATTEMPTS",
    "CredentialStore",
    "DefaultTenant",
    "TenantConflict",
    "TenantService",
    "TenantView",
]

#: How many times a tenant change is decided again after losing a race.
MAX_ATTEMPTS: Final = 5


class CredentialStore(Protocol):
    """Where sealed credentials live (:class:`~relaypush.tenancy.store.PostgresCredentialStore`)."""

    async def save(self, tenant_id: str, credential: Credential) -> int: ...

    async def prune(
        self, tenant_id: str, kind: CredentialKind, *, keep: str, before: int
    ) -> None: ...

    async def high_water(self, tenant_id: str) -> int: ...

    async def remove(self, tenant_id: str, kind: CredentialKind | None, *, up_to: int) -> None: ...


class TenantConflict(Exception):
    """A tenant changed under every one of ``MAX_ATTEMPTS`` attempts; the caller may retry."""


@dataclass(frozen=True, slots=True)
class DefaultTenant:
    """What the settings configure for the default tenant."""

    providers: tuple[ProviderType, ...] = ()
    apns_topic: str | None = None
    apns_type: ApnsType | None = None
    vapid_public_key: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DefaultTenant:
        """What the settings configure; ``ConfigError`` for a VAPID key that cannot be used."""
        providers: list[ProviderType] = []
        apns_type: ApnsType | None = None
        if settings.apns_topic and (settings.apns_key_file or settings.apns_cert_file):
            providers += ["apns", "apns-sandbox"]
            apns_type = "token" if settings.apns_key_file else "certificate"
        if settings.fcm_credentials_file:
            providers.append("fcm")
        vapid = key_from_settings(settings)
        if vapid is not None:
            providers.append("webpush")
        return cls(
            providers=tuple(providers),
            apns_topic=settings.apns_topic if apns_type else None,
            apns_type=apns_type,
            vapid_public_key=vapid.public_key if vapid is not None else None,
        )


@dataclass(frozen=True, slots=True)
class TenantView:
    """What ``GET /tenants/{id}`` answers."""

    url: str
    enabled_providers: tuple[ProviderType, ...]
    apns_topic: str | None
    apns_type: ApnsType | None
    suspended: bool
    suspended_reason: str | None
    vapid_public_key: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


def _not_for_default(what: str) -> InvalidRequest:
    return InvalidRequest(
        fields=(
            FieldError(
                "id",
                f"the default tenant {DEFAULT_TENANT} {what}: its credentials come from the "
                "RELAYPUSH_APNS_*, RELAYPUSH_FCM_* and RELAYPUSH_VAPID_* settings",
                "path",
            ),
        )
    )


class TenantService:
    """Tenant management over the event log and the credential store."""

    def __init__(
        self,
        log: EventLog,
        *,
        tenants: TenantStatuses,
        credentials: CredentialStore | None,
        checker: CredentialChecker,
        base_url: str,
        default: DefaultTenant = DefaultTenant(),
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        """``tenants`` is the cache the push path reads (share the relay service's)."""
        self._log = log
        self._tenants = tenants
        self._credentials = credentials
        self._checker = checker
        self._base_url = base_url.rstrip("/")
        self._default = default
        self._clock = clock
        self._new_id = new_id

    def url_of(self, tenant_id: str) -> str:
        """The base URL of the tenant's client routes."""
        return f"{self._base_url}/{tenant_id}"

    async def create(self, tenant_id: str, *, request_id: str, caller: Caller = ADMIN) -> str:
        """Create the tenant unless it exists (an upsert); returns its URL. A deleted tenant is
        created again only by the admin or a JWT issued after the deletion (``Unauthorized``)."""
        for _ in range(MAX_ATTEMPTS):
            state = await self._tenants.fresh(tenant_id)
            event = decide_create(
                state,
                tenant_id,
                event_id=self._new_id(),
                now=self._clock(),
                request_id=request_id,
                caller=caller,
            )
            if event is None or await self._append((event,), state, tenant_id):
                return self.url_of(tenant_id)
        raise TenantConflict(f"tenant {tenant_id!r} kept changing while being created")

    async def view(self, tenant_id: str) -> TenantView:
        """The tenant as ``GET /tenants/{id}`` shows it; ``TenantNotFound`` if there is none."""
        state = await self._tenants.fresh(tenant_id)
        if not state.exists:
            raise TenantNotFound(tenant_id)
        if tenant_id == DEFAULT_TENANT:
            providers = self._default.providers
            topic, apns_type = self._default.apns_topic, self._default.apns_type
            vapid_public_key = self._default.vapid_public_key
        else:
            providers = configured_providers(state)
            apns = state.apns
            topic = apns.topic if apns is not None else None
            apns_type = apns.type if apns is not None else None
            webpush = state.webpush
            vapid_public_key = webpush.public_key if webpush is not None else None
        return TenantView(
            url=self.url_of(tenant_id),
            enabled_providers=providers,
            apns_topic=topic,
            apns_type=apns_type,
            suspended=state.suspended,
            suspended_reason=state.suspended_reason,
            vapid_public_key=vapid_public_key,
        )

    async def list_ids(self) -> list[str]:
        """Every tenant that exists, the default one first (reads every tenant event)."""
        states: dict[str, TenantState] = {}
        async for record in self._log.read((ANY, TENANT)):
            tenant_id = record.subject[0]
            event = _tenant_event(record.data)
            if event is not None:
                base = states.get(tenant_id) or TenantState(exists=tenant_id == DEFAULT_TENANT)
                states[tenant_id] = evolve(base, event, position=record.position)
        others = sorted(t for t, s in states.items() if s.exists and t != DEFAULT_TENANT)
        return [DEFAULT_TENANT, *others]

    async def delete(self, tenant_id: str, *, request_id: str) -> None:
        """Delete the tenant and its stored credentials; nothing to do when there is none."""
        if tenant_id == DEFAULT_TENANT:
            raise _not_for_default("cannot be deleted")
        for _ in range(MAX_ATTEMPTS):
            state = await self._tenants.fresh(tenant_id)
            event = decide_delete(
                state, tenant_id, event_id=self._new_id(), now=self._clock(), request_id=request_id
            )
            if event is None:
                return
            up_to = await self._credentials.high_water(tenant_id) if self._credentials else 0
            if await self._append((event,), state, tenant_id):
                if self._credentials is not None:
                    await self._credentials.remove(tenant_id, None, up_to=up_to)
                return
        raise TenantConflict(f"tenant {tenant_id!r} kept changing while being deleted")

    async def unsuspend(self, tenant_id: str, *, request_id: str) -> bool:
        """Lift the tenant's suspension (``tenant.unsuspended``): its held notifications go out.
        Returns whether it was suspended; ``TenantNotFound`` if there is no such tenant."""
        for _ in range(MAX_ATTEMPTS):
            state = await self._tenants.fresh(tenant_id)
            event = decide_unsuspend(
                state, tenant_id, event_id=self._new_id(), now=self._clock(), request_id=request_id
            )
            if event is None:
                return False
            if await self._append((event,), state, tenant_id):
                return True
        raise TenantConflict(f"tenant {tenant_id!r} kept changing while being un-suspended")

    async def set_apns(self, tenant_id: str, form: ApnsForm, *, request_id: str) -> None:
        """Check, store and record APNs credentials (lifting a suspension)."""
        self._checker.shape_apns(form)
        await self._writable(tenant_id)
        credential = await self._checker.check_apns(form)
        await self._set(tenant_id, credential, request_id=request_id)

    async def set_fcm(
        self, tenant_id: str, document: str | bytes | None, *, request_id: str
    ) -> None:
        """Check, store and record an FCM service account (lifting a suspension)."""
        self._checker.shape_fcm(document)
        await self._writable(tenant_id)
        credential = await self._checker.check_fcm(document)
        await self._set(tenant_id, credential, request_id=request_id)

    async def set_webpush(
        self,
        tenant_id: str,
        private_key: str | bytes | None,
        subject: str | bytes | None,
        *,
        request_id: str,
    ) -> None:
        """Check, store and record a VAPID key pair (lifting a suspension)."""
        self._checker.shape_webpush(private_key, subject)
        await self._writable(tenant_id)
        credential = self._checker.check_webpush(private_key, subject)
        await self._set(tenant_id, credential, request_id=request_id)

    async def remove(self, tenant_id: str, kind: CredentialKind, *, request_id: str) -> None:
        """Remove the tenant's credentials of ``kind``; nothing to do when it has none."""
        if tenant_id == DEFAULT_TENANT:
            raise _not_for_default("has no uploaded credentials")
        for _ in range(MAX_ATTEMPTS):
            state = await self._tenants.fresh(tenant_id)
            event = decide_remove(
                state,
                tenant_id,
                kind,
                event_id=self._new_id(),
                now=self._clock(),
                request_id=request_id,
            )
            if event is None:
                return
            up_to = await self._credentials.high_water(tenant_id) if self._credentials else 0
            if await self._append((event,), state, tenant_id):
                if self._credentials is not None:
                    await self._credentials.remove(tenant_id, kind, up_to=up_to)
                return
        raise TenantConflict(f"tenant {tenant_id!r} kept changing while removing credentials")

    async def _writable(self, tenant_id: str) -> CredentialStore:
        """The store, once the tenant is known to exist and to take uploads."""
        if tenant_id == DEFAULT_TENANT:
            raise _not_for_default("takes no uploaded credentials")
        state = await self._tenants.fresh(tenant_id)
        if not state.exists:
            raise TenantNotFound(tenant_id)
        if self._credentials is None:
            raise CredentialStorageNotConfigured(
                "tenants' credentials cannot be stored: set RELAYPUSH_CREDENTIALS_KEY and "
                "RELAYPUSH_DATABASE_URL"
            )
        return self._credentials

    async def _set(self, tenant_id: str, credential: Credential, *, request_id: str) -> None:
        store = await self._writable(tenant_id)
        kind = kind_of(credential)
        change = CredentialChange(
            kind=kind,
            fingerprint=fingerprint_of(credential),
            apns_topic=getattr(credential, "topic", None),
            apns_type=apns_type_of(credential),
            fcm_project_id=getattr(credential, "project_id", None),
            vapid_public_key=credential.public_key if isinstance(credential, VapidKey) else None,
        )
        for _ in range(MAX_ATTEMPTS):
            state = await self._tenants.fresh(tenant_id)
            events = decide_credentials(
                state,
                tenant_id,
                change,
                event_ids=(self._new_id(), self._new_id()),
                now=self._clock(),
                request_id=request_id,
            )
            seq = await store.save(tenant_id, credential)  # stored before any event names it
            if await self._append(events, state, tenant_id):
                await store.prune(tenant_id, kind, keep=change.fingerprint, before=seq)
                return
        raise TenantConflict(f"tenant {tenant_id!r} kept changing while setting credentials")

    async def _append(self, events: tuple[Event, ...], state: TenantState, tenant_id: str) -> bool:
        """Append ``events`` in order from ``state.version``; False when a rival got there first.

        Events already appended stay: deciding again from the new state repeats them harmlessly.
        """
        version = state.version
        for event in events:
            try:
                result = await self._log.append(
                    subject_for(event), encode_event(event), expected_version=version
                )
            except WrongExpectedVersion:
                return False
            version = result.position
            assert isinstance(event, TENANT_EVENT_TYPES)
            state = evolve(state, event, position=version)
            self._tenants.remember(tenant_id, state)
        return True


def _tenant_event(data: bytes) -> TenantEvent | None:
    try:
        event = decode_event(data)
    except ValueError:
        return None
    return event if isinstance(event, TENANT_EVENT_TYPES) else None
