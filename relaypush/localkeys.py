"""The secrets a one-command start needs, kept in its data directory.

``relaypush serve`` is meant to have every feature on without any configuration: sealed tenant
credentials need ``RELAYPUSH_CREDENTIALS_KEY``, the audit chain a signing key, the admin and
tenant routes an admin token and a tenant JWT secret, Web Push for the default tenant a VAPID
key. Whatever of these the settings leave unset, ``serve`` creates at its first start under
``<data dir>/keys/`` (the directory owner-only, 0700, each file 0600), says where in its log,
and finds again at every later start; every other ``relaypush`` command run on the same data
directory (``relaypush audit verify``, say) reads them too. A setting, when given, always wins:
production deployments configure their own (see docs/security.md, "Production checklist").
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Final

import msgspec
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relaypush.config import Settings

__all__ = ["KEYS_DIR", "with_local_keys"]

log = structlog.get_logger(__name__)

KEYS_DIR: Final = "keys"
VAPID_SUBJECT: Final = "mailto:relaypush@localhost"
"""The VAPID contact of a key made here: set RELAYPUSH_VAPID_SUBJECT to a real one."""


def _credentials_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(32)) + b"\n"


def _audit_key() -> bytes:
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return seed.hex().encode() + b"\n"


def _token() -> bytes:
    return secrets.token_urlsafe(32).encode() + b"\n"


def _vapid_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_FILES: Final = {
    "credentials.key": _credentials_key,
    "audit-signing.key": _audit_key,
    "admin.token": _token,
    "tenant-jwt.secret": _token,
    "vapid.pem": _vapid_key,
}


def _file(directory: Path, name: str, *, create: bool) -> Path | None:
    """The key file ``name`` in ``directory``: made (owner-only) when missing and ``create``."""
    path = directory / name
    if path.exists():
        return path
    if not create:
        return None
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(_FILES[name]())
    log.warning("secret_created", path=str(path), why="no setting provides it")
    return path


def with_local_keys(settings: Settings, *, create: bool) -> Settings:
    """``settings`` with every secret it leaves unset read from the data directory's key files
    (made first when ``create``)."""
    directory = Path(settings.data_dir) / KEYS_DIR
    changes: dict[str, object] = {}

    def text(name: str) -> str | None:
        path = _file(directory, name, create=create)
        return path.read_text().strip() if path is not None else None

    if not settings.credentials_key and (key := text("credentials.key")):
        changes["credentials_key"] = key
    if not settings.audit_signing_key and (seed := text("audit-signing.key")):
        changes["audit_signing_key"] = seed
    if not settings.admin_token and (token := text("admin.token")):
        changes["admin_token"] = token
    if not settings.tenant_jwt_secret and (secret := text("tenant-jwt.secret")):
        changes["tenant_jwt_secret"] = secret
    if settings.vapid_private_key_file is None:
        vapid = _file(directory, "vapid.pem", create=create)
        if vapid is not None:
            changes["vapid_private_key_file"] = vapid
            changes["vapid_subject"] = settings.vapid_subject or VAPID_SUBJECT
    if changes and create:
        log.info(
            "local_secrets",
            directory=str(directory),
            used=sorted(changes),
            hint="set the RELAYPUSH_ settings of the same names to use your own",
        )
    return msgspec.structs.replace(settings, **changes) if changes else settings
