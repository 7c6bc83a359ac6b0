"""Sealing credentials: AES-GCM under a key ring, bound to their slot, rotating keys; and the
credential values themselves (encoding, fingerprints, a repr that never shows a secret)."""

from __future__ import annotations

import base64

import pytest

from relaypush.config import ConfigError, Settings
from relaypush.domain.credentials import (
    ApnsCertificateFile,
    ApnsTokenKey,
    FcmServiceAccount,
    apns_type_of,
    decode_credential,
    encode_credential,
    fingerprint_of,
    kind_of,
)
from relaypush.sealing import (
    CredentialKeyError,
    Keyring,
    Sealed,
    UnknownKey,
    generate_key,
    key_id_of,
    parse_key,
)
from relaypush.tenancy.store import check_credentials_schema, keyring_from_settings

OLD, NEW = generate_key(), generate_key()
CONTEXT = b"tenant_credentials\x00acme\x00apns\x00sha256:x"


def test_sealed_opens_and_hides_the_plaintext() -> None:
    ring = Keyring.from_text(NEW)
    sealed = ring.seal(b"-----BEGIN PRIVATE KEY-----secret", context=CONTEXT)
    assert b"secret" not in sealed.ciphertext
    assert sealed.key_id == key_id_of(parse_key(NEW)) == ring.current_id
    assert len(sealed.nonce) == 12
    assert ring.open(sealed, context=CONTEXT) == b"-----BEGIN PRIVATE KEY-----secret"


def test_every_seal_uses_a_fresh_nonce() -> None:
    ring = Keyring.from_text(NEW)
    a, b = (ring.seal(b"same", context=CONTEXT) for _ in range(2))
    assert a.nonce != b.nonce
    assert a.ciphertext != b.ciphertext


def test_a_ciphertext_moved_to_another_slot_or_altered_does_not_open() -> None:
    ring = Keyring.from_text(NEW)
    sealed = ring.seal(b"secret", context=CONTEXT)
    with pytest.raises(CredentialKeyError):
        ring.open(sealed, context=CONTEXT.replace(b"acme", b"evil"))
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(CredentialKeyError):
        ring.open(Sealed(sealed.key_id, sealed.nonce, flipped), context=CONTEXT)


def test_rotation_old_keys_open_the_new_key_seals() -> None:
    before = Keyring.from_text(OLD).seal(b"secret", context=CONTEXT)
    rotated = Keyring.from_text(NEW, [OLD])
    assert rotated.open(before, context=CONTEXT) == b"secret"
    resealed = rotated.seal(rotated.open(before, context=CONTEXT), context=CONTEXT)
    assert resealed.key_id == key_id_of(parse_key(NEW)) != before.key_id
    assert rotated.key_ids == {key_id_of(parse_key(NEW)), key_id_of(parse_key(OLD))}
    after = Keyring.from_text(NEW)
    assert after.open(resealed, context=CONTEXT) == b"secret"
    with pytest.raises(UnknownKey) as unknown:
        after.open(before, context=CONTEXT)
    assert unknown.value.key_id == before.key_id
    assert "RELAYPUSH_CREDENTIALS_OLD_KEYS" in str(unknown.value)


@pytest.mark.parametrize(
    "bad",
    ["", "not base64!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(33)).decode()],
)
def test_a_bad_key_is_refused_with_the_setting_named(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_key(bad)
    with pytest.raises(ValueError, match="RELAYPUSH_CREDENTIALS_KEY"):
        Keyring.from_text(bad)
    with pytest.raises(ValueError, match="OLD_KEYS item 2"):
        Keyring.from_text(NEW, [OLD, bad])
    if bad:  # empty is unset
        with pytest.raises(ConfigError):
            keyring_from_settings(Settings(credentials_key=bad))


def test_url_safe_base64_keys_are_accepted() -> None:
    raw = bytes(range(251, 256)) * 6 + b"\xfb\xff"
    assert parse_key(base64.urlsafe_b64encode(raw).decode()) == raw


def test_no_key_no_keyring() -> None:
    assert keyring_from_settings(Settings()) is None
    assert keyring_from_settings(Settings(credentials_key=NEW)) is not None


@pytest.mark.parametrize("schema", ["relaypush", "relaypush_rebuild", "relaypush_old", "public"])
def test_the_credentials_schema_stays_apart_from_the_rebuilt_tables(schema: str) -> None:
    with pytest.raises(ConfigError):
        check_credentials_schema(Settings(credentials_schema=schema))
    assert check_credentials_schema(Settings()) == "relaypush_credentials"


# credential values

TOKEN = ApnsTokenKey(
    topic="com.example.app",
    key_id="ABCDE12345",
    team_id="TEAM123456",
    pkcs8_pem="-----BEGIN PRIVATE KEY-----\nS3CR3T\n-----END PRIVATE KEY-----\n",
)
CERT = ApnsCertificateFile(topic="com.example.app", p12=b"\x30\x82secret-p12", password="hunter2")
FCM = FcmServiceAccount(project_id="proj", document='{"private_key":"S3CR3T"}')


@pytest.mark.parametrize("credential", [TOKEN, CERT, FCM])
def test_credentials_round_trip_and_never_show_a_secret(
    credential: ApnsTokenKey | ApnsCertificateFile | FcmServiceAccount,
) -> None:
    assert decode_credential(encode_credential(credential)) == credential
    text = f"{credential!r} {credential}"
    for secret in ("S3CR3T", "hunter2", "secret-p12"):
        assert secret not in text
    assert fingerprint_of(credential) in text


def test_fingerprints_change_with_any_part_and_name_no_secret() -> None:
    other = ApnsTokenKey(
        topic="com.example.other",
        key_id=TOKEN.key_id,
        team_id=TOKEN.team_id,
        pkcs8_pem=TOKEN.pkcs8_pem,
    )
    assert fingerprint_of(TOKEN) != fingerprint_of(other)
    assert fingerprint_of(TOKEN) == fingerprint_of(decode_credential(encode_credential(TOKEN)))
    assert fingerprint_of(TOKEN).startswith("sha256:")
    assert len(fingerprint_of(TOKEN)) == len("sha256:") + 24


def test_kinds_and_apns_types() -> None:
    assert [kind_of(c) for c in (TOKEN, CERT, FCM)] == ["apns", "apns", "fcm_v1"]
    assert [apns_type_of(c) for c in (TOKEN, CERT, FCM)] == ["token", "certificate", None]
