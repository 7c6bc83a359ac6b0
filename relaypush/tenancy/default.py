"""The default tenant's credentials: the settings, their fingerprints, and lifting a suspension
when they change.

The default tenant (``0000-0000-0000-0000``) takes its APNs, FCM and VAPID credentials from the
settings, not from an upload, so nothing appends a credential change when an operator fixes them.
Instead, a suspension records the fingerprint of the credentials that were refused
(``tenant.suspended``'s ``fingerprint``, from :func:`default_fingerprints`), and a dispatcher
that starts with settings whose fingerprint differs checks the new ones as an upload would be
checked and, when they pass, appends ``tenant.unsuspended``
(:func:`unsuspend_default_on_new_settings`). ``POST /tenants/0000-0000-0000-0000/unsuspend``
and ``relaypush tenants unsuspend 0000-0000-0000-0000`` lift it by hand.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import structlog

from eventstore import EventLog, WrongExpectedVersion
from relaypush.aggregates import TenantStatuses
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.events import (
    ProviderType,
    TenantSuspended,
    TenantUnsuspended,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import tenant_subject
from relaypush.tenancy.checks import ApnsForm, CredentialChecker

__all__ = ["default_fingerprints", "unsuspend_default_on_new_settings"]

log = structlog.get_logger(__name__)


def _read(path: Path | None) -> bytes:
    if path is None:
        return b""
    try:
        return path.read_bytes()
    except OSError:
        return b"\x00unreadable:" + str(path).encode()


def _fingerprint(parts: Iterable[bytes | str | None]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = b"" if part is None else part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return "sha256:" + digest.hexdigest()[:24]


def default_fingerprints(settings: Settings) -> dict[ProviderType, str]:
    """A fingerprint of the credentials each of the default tenant's providers uses (a change
    of any file or setting changes it)."""
    apns = _fingerprint(
        (
            settings.apns_topic,
            settings.apns_key_id,
            settings.apns_team_id,
            _read(settings.apns_key_file),
            _read(settings.apns_cert_file),
            settings.apns_cert_password,
        )
    )
    return {
        "apns": apns,
        "apns-sandbox": apns,
        "fcm": _fingerprint((_read(settings.fcm_credentials_file),)),
        "webpush": _fingerprint((_read(settings.vapid_private_key_file), settings.vapid_subject)),
    }


async def _check(settings: Settings, provider: ProviderType, checker: CredentialChecker) -> None:
    """The settings' credentials for ``provider``, checked as an upload is; ``InvalidRequest``."""
    if provider in ("apns", "apns-sandbox"):
        await checker.check_apns(
            ApnsForm(
                topic=settings.apns_topic,
                certificate=_read(settings.apns_cert_file) if settings.apns_cert_file else None,
                certificate_password=settings.apns_cert_password,
                pkcs8_pem=_read(settings.apns_key_file) if settings.apns_key_file else None,
                key_id=settings.apns_key_id,
                team_id=settings.apns_team_id,
            )
        )
    elif provider == "fcm":
        await checker.check_fcm(_read(settings.fcm_credentials_file) or None)
    elif provider == "webpush":
        checker.check_webpush(
            _read(settings.vapid_private_key_file) or None, settings.vapid_subject
        )


async def unsuspend_default_on_new_settings(
    event_log: EventLog,
    tenants: TenantStatuses,
    settings: Settings,
    checker: CredentialChecker,
) -> bool:
    """Lift the default tenant's suspension when the settings of the provider that suspended it
    changed since, and the new ones pass their check; returns whether it was lifted."""
    state = await tenants.fresh(DEFAULT_TENANT)
    if not state.suspended:
        return False
    suspension: TenantSuspended | None = None
    async for record in event_log.read(tenant_subject(DEFAULT_TENANT)):
        event = decode_event(record.data)
        if isinstance(event, TenantSuspended):
            suspension = event
    if suspension is None or suspension.provider is None or suspension.fingerprint is None:
        return False  # nothing says which credentials were refused: an operator decides
    now = default_fingerprints(settings)[suspension.provider]
    if now == suspension.fingerprint:
        log.warning(
            "default_tenant_still_suspended",
            provider=suspension.provider,
            reason=suspension.reason,
            hint="fix the provider settings, or: relaypush tenants unsuspend " + DEFAULT_TENANT,
        )
        return False
    try:
        await _check(settings, suspension.provider, checker)
    except InvalidRequest as refused:
        log.warning(
            "default_tenant_new_settings_refused",
            provider=suspension.provider,
            problems=[f"{f.field}: {f.description}" for f in refused.fields],
        )
        return False
    lifted = TenantUnsuspended(
        event_id=uuid.uuid4().hex,
        occurred_at=datetime.now(UTC),
        tenant_id=DEFAULT_TENANT,
    )
    try:
        await event_log.append(
            tenant_subject(DEFAULT_TENANT), encode_event(lifted), expected_version=state.version
        )
    except WrongExpectedVersion:
        return False  # someone else changed it first: their word stands
    tenants.mark(DEFAULT_TENANT, False)
    log.info("default_tenant_unsuspended", provider=suspension.provider, why="settings changed")
    return True
