"""serve's first start makes the secrets it needs under the data directory, owner-only, and
every later command finds them; settings always win."""

from __future__ import annotations

import stat
from pathlib import Path

from relaypush.audit.keys import SigningKey
from relaypush.config import Settings
from relaypush.delivery.vapid import key_from_settings
from relaypush.localkeys import KEYS_DIR, with_local_keys
from relaypush.sealing import Keyring


def test_a_first_serve_makes_every_secret_owner_only_and_later_commands_find_them(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    assert with_local_keys(settings, create=False) == settings  # nothing made by others
    made = with_local_keys(settings, create=True)
    directory = tmp_path / KEYS_DIR
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert made.credentials_key is not None
    assert made.audit_signing_key is not None
    assert made.admin_token is not None
    assert made.tenant_jwt_secret is not None
    assert len(made.tenant_jwt_secret.encode()) >= 32
    Keyring.from_text(made.credentials_key)
    SigningKey.from_hex(made.audit_signing_key)
    vapid = key_from_settings(made)
    assert vapid is not None
    assert made.vapid_subject == "mailto:relaypush@localhost"
    # the next command on the same data directory reads the same secrets, making nothing
    again = with_local_keys(settings, create=False)
    assert again == made
    assert with_local_keys(settings, create=True) == made


def test_settings_win_over_the_files(tmp_path: Path) -> None:
    with_local_keys(Settings(data_dir=tmp_path), create=True)
    mine = Settings(data_dir=tmp_path, admin_token="my-token", audit_signing_key="11" * 32)
    used = with_local_keys(mine, create=True)
    assert (used.admin_token, used.audit_signing_key) == ("my-token", "11" * 32)
    assert used.credentials_key  # still the file's, nothing configured it
