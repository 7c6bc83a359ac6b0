"""The default tenant's suspension is lifted by a start with changed provider settings that pass
their check (relaypush.tenancy.default), never by unchanged or broken ones."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from eventstore import InMemoryEventLog
from relaypush.aggregates import TenantStatuses
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.domain.events import TenantSuspended, TenantUnsuspended, decode_event, encode_event
from relaypush.domain.streams import tenant_subject
from relaypush.tenancy.checks import CredentialChecker
from relaypush.tenancy.default import default_fingerprints, unsuspend_default_on_new_settings


def p8(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def apns_settings(key_file: Path) -> Settings:
    return Settings(
        apns_topic="com.example.wallet",
        apns_key_file=key_file,
        apns_key_id="KEY1234567",
        apns_team_id="TEAM123456",
    )


async def suspended_by(log: InMemoryEventLog, settings: Settings | None) -> None:
    event = TenantSuspended(
        event_id="s",
        occurred_at=datetime.now(UTC),
        tenant_id=DEFAULT_TENANT,
        reason="apns: 403 InvalidProviderToken",
        provider="apns" if settings is not None else None,
        fingerprint=default_fingerprints(settings)["apns"] if settings is not None else None,
    )
    await log.append(tenant_subject(DEFAULT_TENANT), encode_event(event))


async def lifted(log: InMemoryEventLog, settings: Settings) -> bool:
    tenants = TenantStatuses(log)
    result = await unsuspend_default_on_new_settings(log, tenants, settings, CredentialChecker())
    events = [decode_event(r.data) async for r in log.read()]
    assert result == any(isinstance(e, TenantUnsuspended) for e in events)
    assert (await tenants.fresh(DEFAULT_TENANT)).suspended is not result
    return result


async def test_new_settings_that_pass_their_check_lift_the_suspension(tmp_path: Path) -> None:
    log = InMemoryEventLog()
    await suspended_by(log, apns_settings(p8(tmp_path / "old.p8")))
    assert await lifted(log, apns_settings(p8(tmp_path / "new.p8")))


async def test_unchanged_settings_keep_the_tenant_suspended(tmp_path: Path) -> None:
    log = InMemoryEventLog()
    settings = apns_settings(p8(tmp_path / "same.p8"))
    await suspended_by(log, settings)
    assert not await lifted(log, settings)


@pytest.mark.parametrize("content", [b"not a key", b""])
async def test_changed_settings_that_fail_their_check_keep_it_suspended(
    tmp_path: Path, content: bytes
) -> None:
    log = InMemoryEventLog()
    await suspended_by(log, apns_settings(p8(tmp_path / "old.p8")))
    broken = tmp_path / "broken.p8"
    broken.write_bytes(content)
    assert not await lifted(log, apns_settings(broken))


async def test_a_suspension_that_names_no_credentials_waits_for_an_operator(
    tmp_path: Path,
) -> None:
    log = InMemoryEventLog()
    await suspended_by(log, None)
    assert not await lifted(log, apns_settings(p8(tmp_path / "new.p8")))


def test_fingerprints_follow_the_files_not_their_names(tmp_path: Path) -> None:
    key = p8(tmp_path / "a.p8")
    moved = tmp_path / "b.p8"
    moved.write_bytes(key.read_bytes())
    first = default_fingerprints(apns_settings(key))
    assert first == default_fingerprints(apns_settings(moved))
    assert first["apns"] == first["apns-sandbox"]
    assert first["apns"] != default_fingerprints(apns_settings(p8(tmp_path / "c.p8")))["apns"]
