"""Settings, read from ``RELAYPUSH_*`` environment variables (and an optional TOML file).

Every field of :class:`Settings` is a setting: ``RELAYPUSH_`` plus the field name in upper case.
``docs/configuration.md`` lists them all and a test keeps the two in step. ``create_app`` and
the workers take a ``Settings`` value and never read the environment themselves.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from relaypush.domain.public_keys import relay_key_problem

__all__ = [
    "DEFAULT_TENANT",
    "DEFAULT_WEBPUSH_HOSTS",
    "PREFIX",
    "TENANT_JWT_SECRET_MIN_BYTES",
    "ConfigError",
    "Settings",
    "load_settings",
]

PREFIX = "RELAYPUSH_"
TEST_PREFIX = "RELAYPUSH_TEST_"
DEFAULT_TENANT = "0000-0000-0000-0000"
#: The browser vendors' push services: the only hosts a Web Push subscription may point at.
DEFAULT_WEBPUSH_HOSTS: tuple[str, ...] = (
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.notify.windows.com",
    "web.push.apple.com",
)
#: An HS256 key shorter than the hash (32 bytes) is refused (RFC 7518, section 3.2).
TENANT_JWT_SECRET_MIN_BYTES = 32


class ConfigError(Exception):
    """A setting is missing, malformed or inconsistent."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # where the HTTP API listens and how it calls itself
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None
    # backing services; None starts an embedded one under data_dir
    nats_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path("relaypush-data")
    # event log layout
    stream_name: str = "RELAYPUSH"
    subject_prefix: str = "relaypush"
    stream_replicas: int = 1
    duplicate_window: float = 300.0
    dedup_retention: float = 30 * 86400.0
    # retention of the log itself, and its archive (relaypush.audit.archive, relaypush.retention)
    log_max_age: float = 0.0
    log_max_bytes: int = 0
    archive_dir: Path | None = None
    archive_segment_events: int = 50_000
    archive_segment_seconds: float = 600.0
    database_schema: str = "relaypush"
    # relay and client authentication
    relay_public_key: str | None = None
    signature_max_age: int = 300
    require_client_auth: bool = False
    client_jwt_max_age: float = 86400.0
    admin_token: str | None = None
    tenant_jwt_secret: str | None = None
    rate_limit_per_minute: int = 100
    trusted_proxies: tuple[str, ...] = ()
    max_body_size: int = 1024 * 1024
    # tenants' provider credentials, sealed at rest (relaypush.tenancy)
    credentials_key: str | None = None
    credentials_old_keys: tuple[str, ...] = ()
    credentials_schema: str = "relaypush_credentials"
    fcm_token_hosts: tuple[str, ...] = ("oauth2.googleapis.com",)
    api_workers: int | None = None
    metrics_port: int | None = None
    # delivery
    delivery_deadline: float = 86400.0
    dispatcher_concurrency: int = 64
    send_timeout: float = 10.0
    apns_topic: str | None = None
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_cert_file: Path | None = None
    apns_cert_password: str | None = None
    fcm_credentials_file: Path | None = None
    apns_url: str = "https://api.push.apple.com"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com"
    apns_ca_file: Path | None = None
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_ca_file: Path | None = None
    # Web Push (VAPID): the default tenant's key pair, and where subscriptions may point
    vapid_private_key_file: Path | None = None
    vapid_subject: str | None = None
    webpush_hosts: tuple[str, ...] = DEFAULT_WEBPUSH_HOSTS
    webpush_ca_file: Path | None = None
    # audit trail (relaypush.audit): hash chain checkpoints signed with an Ed25519 key
    audit_signing_key: str | None = None
    audit_public_key: str | None = None
    audit_checkpoint_interval: int = 1000
    audit_checkpoint_seconds: float = 10.0
    # logging
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __post_init__(self) -> None:
        if self.log_max_age < 0 or self.log_max_bytes < 0:
            raise ConfigError(
                "RELAYPUSH_LOG_MAX_AGE and RELAYPUSH_LOG_MAX_BYTES cannot be negative"
            )
        if 0 < self.log_max_age < self.delivery_deadline + 3600:
            raise ConfigError(
                f"RELAYPUSH_LOG_MAX_AGE ({self.log_max_age:g} s) must be at least an hour longer "
                f"than RELAYPUSH_DELIVERY_DEADLINE ({self.delivery_deadline:g} s): a notification "
                "must stay in the log for as long as it may still be delivered"
            )
        secret = self.tenant_jwt_secret
        if secret and len(secret.encode()) < TENANT_JWT_SECRET_MIN_BYTES:
            raise ConfigError(
                f"RELAYPUSH_TENANT_JWT_SECRET must have at least {TENANT_JWT_SECRET_MIN_BYTES} "
                f"bytes (it has {len(secret.encode())}): an HS256 key shorter than its hash is "
                "refused (RFC 7518, section 3.2)"
            )

    @property
    def log_limited(self) -> bool:
        """Whether the stream drops its oldest events (``RELAYPUSH_LOG_MAX_AGE`` or ``_BYTES``)."""
        return self.log_max_age > 0 or self.log_max_bytes > 0

    @property
    def archive_directory(self) -> Path | None:
        """Where the log is archived: ``RELAYPUSH_ARCHIVE_DIR``, or ``archive`` in the data
        directory when the stream has limits; None when nothing is archived."""
        if self.archive_dir is not None:
            return self.archive_dir
        return self.data_dir / "archive" if self.log_limited else None

    @property
    def base_url(self) -> str:
        """The URL clients use to reach this server (``aud`` of client JWTs, tenant URLs)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


SETTING_NAMES: tuple[str, ...] = tuple(PREFIX + f.upper() for f in Settings.__struct_fields__)
_TUPLES = {
    name
    for name in Settings.__struct_fields__
    if "tuple" in str(Settings.__annotations__.get(name, ""))
}


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot read {kind.__name__} settings")


def load_settings(
    environ: Mapping[str, str] | None = None, *, file: Path | None = None
) -> Settings:
    """Settings from ``environ`` (default ``os.environ``), over ``file`` (or
    ``RELAYPUSH_CONFIG_FILE``) when given; unknown ``RELAYPUSH_*`` names are an error."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    config_file = file or (
        Path(env["RELAYPUSH_CONFIG_FILE"]) if env.get("RELAYPUSH_CONFIG_FILE") else None
    )
    if config_file is not None:
        try:
            raw.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    for key, value in env.items():
        if not key.startswith(PREFIX) or key == "RELAYPUSH_CONFIG_FILE":
            continue
        if key.startswith(TEST_PREFIX):  # the test suite's own variables, not settings
            continue
        name = key[len(PREFIX) :].lower()
        if name not in Settings.__struct_fields__:
            raise ConfigError(f"unknown setting {key}")
        if value == "":
            continue
        raw[name] = (
            tuple(v.strip() for v in value.split(",") if v.strip()) if name in _TUPLES else value
        )
    try:
        settings = msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc
    _check_keys(settings)
    return settings


def _check_keys(settings: Settings) -> None:
    """Refuse a relay key nobody can sign with (all zeros, small order, not a point)."""
    if settings.relay_public_key is not None:
        problem = relay_key_problem(settings.relay_public_key)
        if problem is not None:
            raise ConfigError(f"RELAYPUSH_RELAY_PUBLIC_KEY: {problem}")
