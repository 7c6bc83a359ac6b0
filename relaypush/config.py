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

from relaypush.auth.relay_signature import relay_key_problem

__all__ = ["DEFAULT_TENANT", "PREFIX", "ConfigError", "Settings", "load_settings"]

PREFIX = "RELAYPUSH_"
TEST_PREFIX = "RELAYPUSH_TEST_"
DEFAULT_TENANT = "0000-0000-0000-0000"


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
    database_schema: str = "relaypush"
    # relay and client authentication
    relay_public_key: str | None = None
    signature_max_age: int = 300
    require_client_auth: bool = False
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
    api_workers: int = 1
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
    # audit trail (relaypush.audit): hash chain checkpoints signed with an Ed25519 key
    audit_signing_key: str | None = None
    audit_public_key: str | None = None
    audit_checkpoint_interval: int = 1000
    audit_checkpoint_seconds: float = 10.0
    # logging
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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
