"""Tenants' sealed credentials in PostgreSQL: the one thing relaypush stores outside the log.

Credentials are secrets, so they are not in the event log, and the read tables cannot be rebuilt
with them: they live in a schema of their own (``RELAYPUSH_CREDENTIALS_SCHEMA``, by default
``relaypush_credentials``) that ``relaypush projections rebuild`` never touches::

    tenant_credentials (tenant_id, kind, fingerprint)   -- primary key
        key_id, nonce, ciphertext                       -- AES-256-GCM, see relaypush.sealing
        seq                                             -- rises with every store
        stored_at

A row is keyed by the credential's fingerprint, which is what the tenant's events name, so a
dispatcher always opens exactly the credential the log says is current. Rows that no event names
any more are pruned after the event that replaced or removed them is appended, and only rows
stored before the replacing one (``seq``), so that two uploads racing each other never prune the
one that won (the loser's append fails its expected version, and it stores again before it
retries). Deleting a tenant deletes its rows.

The table's own migrations are numbered in :data:`MIGRATIONS` and recorded in
``<schema>.credential_migrations``; :func:`migrate_credentials` is safe to run from every process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from projections.schema import Migration, apply_migrations, check_schema_name
from relaypush.config import ConfigError, Settings
from relaypush.domain.credentials import (
    Credential,
    decode_credential,
    encode_credential,
    fingerprint_of,
    kind_of,
)
from relaypush.domain.events import CredentialKind
from relaypush.sealing import CredentialKeyError, Keyring, Sealed
from relaypush.tenancy.errors import CredentialStoreUnavailable

__all__ = [
    "MIGRATIONS",
    "TABLE",
    "PostgresCredentialStore",
    "RotationReport",
    "check_credentials_schema",
    "keyring_from_settings",
    "migrate_credentials",
    "open_credential_store",
    "rotate_key",
]

log = structlog.get_logger(__name__)

TABLE: Final = "tenant_credentials"

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE SEQUENCE tenant_credentials_seq;
        CREATE TABLE tenant_credentials (
            tenant_id   text        NOT NULL,
            kind        text        NOT NULL CONSTRAINT tenant_credentials_kind
                                    CHECK (kind IN ('apns', 'fcm_v1')),
            fingerprint text        NOT NULL,
            key_id      text        NOT NULL,
            nonce       bytea       NOT NULL,
            ciphertext  bytea       NOT NULL,
            seq         bigint      NOT NULL DEFAULT nextval('tenant_credentials_seq'),
            stored_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, kind, fingerprint)
        );
        CREATE INDEX tenant_credentials_key_id ON tenant_credentials (key_id);
        """,
    ),
    (
        2,
        """
        ALTER TABLE tenant_credentials DROP CONSTRAINT tenant_credentials_kind;
        ALTER TABLE tenant_credentials ADD CONSTRAINT tenant_credentials_kind
            CHECK (kind IN ('apns', 'fcm_v1', 'webpush'));
        """,
    ),
)


def keyring_from_settings(settings: Settings) -> Keyring | None:
    """The key ring the settings configure, None without ``RELAYPUSH_CREDENTIALS_KEY``."""
    if not settings.credentials_key:
        return None
    try:
        return Keyring.from_text(settings.credentials_key, settings.credentials_old_keys)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_credentials_schema(settings: Settings) -> str:
    """The credentials schema, if it is usable and apart from the rebuilt read tables."""
    schema = settings.credentials_schema
    try:
        check_schema_name(schema)
    except ValueError as exc:
        raise ConfigError(f"RELAYPUSH_CREDENTIALS_SCHEMA: {exc}") from exc
    read = settings.database_schema
    if schema in (read, f"{read}_rebuild", f"{read}_old"):
        raise ConfigError(
            "RELAYPUSH_CREDENTIALS_SCHEMA must differ from RELAYPUSH_DATABASE_SCHEMA (and its "
            "_rebuild and _old companions): a rebuild of the read tables would drop credentials"
        )
    return schema


async def migrate_credentials(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create ``schema`` and apply the credential table's pending migrations, in one
    transaction under an advisory lock (safe when several processes start at once)."""
    try:
        done = await apply_migrations(
            conn,
            schema,
            [Migration(version, "credentials", text) for version, text in MIGRATIONS],
            ledger="credential_migrations",
            lock_purpose="credentials",
        )
        for migration in done:
            log.info("credential_migration_applied", schema=schema, version=migration.version)
    except psycopg.Error as exc:
        raise CredentialStoreUnavailable(f"migrating schema {schema!r} failed: {exc}") from exc


def _context(tenant_id: str, kind: str, fingerprint: str) -> bytes:
    """What a ciphertext is bound to: it opens in this tenant's slot for this credential only."""
    return "\x00".join((TABLE, tenant_id, kind, fingerprint)).encode()


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What a re-sealing pass did: rows re-sealed, and rows whose key is not configured."""

    resealed: int = 0
    already_current: int = 0
    unopenable: tuple[tuple[str, str, str], ...] = field(default=())


class PostgresCredentialStore:
    """Sealed credentials in ``<schema>.tenant_credentials``, over a connection pool."""

    def __init__(self, pool: AsyncConnectionPool[Any], schema: str, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring
        self._table = sql.Identifier(schema, TABLE)

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    async def save(self, tenant_id: str, credential: Credential) -> int:
        """Seal and store ``credential`` for ``tenant_id``; returns its ``seq``."""
        kind, fingerprint = kind_of(credential), fingerprint_of(credential)
        sealed = self._keyring.seal(
            encode_credential(credential), context=_context(tenant_id, kind, fingerprint)
        )
        query = sql.SQL(
            "INSERT INTO {t} (tenant_id, kind, fingerprint, key_id, nonce, ciphertext)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant_id, kind, fingerprint) DO UPDATE SET"
            " key_id = excluded.key_id, nonce = excluded.nonce,"
            " ciphertext = excluded.ciphertext, seq = DEFAULT, stored_at = now()"
            " RETURNING seq"
        ).format(t=self._table)
        params = (tenant_id, kind, fingerprint, sealed.key_id, sealed.nonce, sealed.ciphertext)
        row = await self._fetchone(query, params)
        assert row is not None
        return int(row[0])

    async def load(
        self, tenant_id: str, kind: CredentialKind, fingerprint: str
    ) -> Credential | None:
        """The credential stored under this fingerprint, None when there is none.

        Raises ``CredentialKeyError`` when it does not open. One sealed under an old key is
        re-sealed under the current key on the way.
        """
        query = sql.SQL(
            "SELECT key_id, nonce, ciphertext FROM {t}"
            " WHERE tenant_id = %s AND kind = %s AND fingerprint = %s"
        ).format(t=self._table)
        row = await self._fetchone(query, (tenant_id, kind, fingerprint))
        if row is None:
            return None
        sealed = Sealed(str(row[0]), bytes(row[1]), bytes(row[2]))
        context = _context(tenant_id, kind, fingerprint)
        plaintext = self._keyring.open(sealed, context=context)
        try:
            credential = decode_credential(plaintext)
        except msgspec.ValidationError as exc:
            raise CredentialKeyError("a stored credential does not decode") from exc
        if kind_of(credential) != kind or fingerprint_of(credential) != fingerprint:
            raise CredentialKeyError("a stored credential does not match its fingerprint")
        if sealed.key_id != self._keyring.current_id:
            await self._reseal(tenant_id, kind, fingerprint, sealed, plaintext)
        return credential

    async def prune(self, tenant_id: str, kind: CredentialKind, *, keep: str, before: int) -> None:
        """Delete the tenant's other credentials of ``kind`` stored before ``seq`` ``before``."""
        query = sql.SQL(
            "DELETE FROM {t} WHERE tenant_id = %s AND kind = %s AND fingerprint <> %s AND seq < %s"
        ).format(t=self._table)
        await self._execute(query, (tenant_id, kind, keep, before))

    async def high_water(self, tenant_id: str) -> int:
        """The highest ``seq`` of the tenant's rows (0: none)."""
        query = sql.SQL("SELECT coalesce(max(seq), 0) FROM {t} WHERE tenant_id = %s").format(
            t=self._table
        )
        row = await self._fetchone(query, (tenant_id,))
        return int(row[0]) if row is not None else 0

    async def remove(self, tenant_id: str, kind: CredentialKind | None, *, up_to: int) -> None:
        """Delete the tenant's rows of ``kind`` (None: every kind) with ``seq`` up to ``up_to``."""
        if kind is None:
            query = sql.SQL("DELETE FROM {t} WHERE tenant_id = %s AND seq <= %s").format(
                t=self._table
            )
            await self._execute(query, (tenant_id, up_to))
        else:
            query = sql.SQL(
                "DELETE FROM {t} WHERE tenant_id = %s AND kind = %s AND seq <= %s"
            ).format(t=self._table)
            await self._execute(query, (tenant_id, kind, up_to))

    async def rotate(self) -> RotationReport:
        """Re-seal every credential not sealed under the current key."""
        query = sql.SQL(
            "SELECT tenant_id, kind, fingerprint, key_id, nonce, ciphertext FROM {t}"
            " WHERE key_id <> %s ORDER BY tenant_id, kind, fingerprint"
        ).format(t=self._table)
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, (self._keyring.current_id,))
                rows = await cur.fetchall()
                counted = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {t} WHERE key_id = %s").format(t=self._table),
                    (self._keyring.current_id,),
                )
                current_row = await counted.fetchone()
        except psycopg.Error as exc:
            raise CredentialStoreUnavailable(f"reading credentials failed: {exc}") from exc
        resealed = 0
        unopenable: list[tuple[str, str, str]] = []
        for tenant_id, kind, fingerprint, key_id, nonce, ciphertext in rows:
            sealed = Sealed(str(key_id), bytes(nonce), bytes(ciphertext))
            try:
                plaintext = self._keyring.open(
                    sealed, context=_context(str(tenant_id), kind, str(fingerprint))
                )
            except CredentialKeyError:
                unopenable.append((str(tenant_id), str(kind), str(key_id)))
                continue
            if await self._reseal(str(tenant_id), kind, str(fingerprint), sealed, plaintext):
                resealed += 1
        report = RotationReport(
            resealed=resealed,
            already_current=int(current_row[0]) if current_row is not None else 0,
            unopenable=tuple(unopenable),
        )
        log.info(
            "credentials_rotated",
            key_id=self._keyring.current_id,
            resealed=report.resealed,
            already_current=report.already_current,
            unopenable=len(report.unopenable),
        )
        return report

    async def _reseal(
        self,
        tenant_id: str,
        kind: str,
        fingerprint: str,
        sealed: Sealed,
        plaintext: bytes,
    ) -> bool:
        """Seal ``plaintext`` again under the current key, unless the row changed meanwhile."""
        fresh = self._keyring.seal(plaintext, context=_context(tenant_id, kind, fingerprint))
        query = sql.SQL(
            "UPDATE {t} SET key_id = %s, nonce = %s, ciphertext = %s"
            " WHERE tenant_id = %s AND kind = %s AND fingerprint = %s AND key_id = %s"
            " AND nonce = %s"
        ).format(t=self._table)
        params = (
            fresh.key_id,
            fresh.nonce,
            fresh.ciphertext,
            tenant_id,
            kind,
            fingerprint,
            sealed.key_id,
            sealed.nonce,
        )
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                changed: bool = cur.rowcount == 1
        except psycopg.Error as exc:
            log.warning("credential_reseal_failed", tenant_id=tenant_id, kind=kind, error=str(exc))
            return False
        if changed:
            log.info(
                "credential_resealed",
                tenant_id=tenant_id,
                kind=kind,
                old_key_id=sealed.key_id,
                key_id=fresh.key_id,
            )
        return changed

    async def _fetchone(self, query: sql.Composed, params: tuple[object, ...]) -> Any:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchone()
        except psycopg.Error as exc:
            raise CredentialStoreUnavailable(f"the credential store failed: {exc}") from exc

    async def _execute(self, query: sql.Composed, params: tuple[object, ...]) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(query, params)
        except psycopg.Error as exc:
            raise CredentialStoreUnavailable(f"the credential store failed: {exc}") from exc


@contextlib.asynccontextmanager
async def open_credential_store(
    settings: Settings, database_url: str, *, max_connections: int = 4
) -> AsyncIterator[PostgresCredentialStore | None]:
    """The credential store the settings configure, migrated and ready; closed on exit.

    Yields None when ``RELAYPUSH_CREDENTIALS_KEY`` or ``database_url`` is unset: tenants'
    credentials can then be neither stored nor used. Raises ``ConfigError`` for a bad key or
    schema, :class:`CredentialStoreUnavailable` when PostgreSQL cannot be reached.
    """
    keyring = keyring_from_settings(settings)
    schema = check_credentials_schema(settings)
    if keyring is None or not database_url:
        if keyring is not None:
            log.warning("credential_store_without_database")
        yield None
        return
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_connections,
        open=False,
        kwargs={"autocommit": True},
    )
    try:
        await pool.open(wait=True, timeout=30.0)
    except psycopg.Error as exc:
        raise CredentialStoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with pool.connection() as conn:
            await migrate_credentials(conn, schema)
        yield PostgresCredentialStore(pool, schema, keyring)
    finally:
        await pool.close()


async def rotate_key(settings: Settings, database_url: str) -> RotationReport:
    """Re-seal every stored credential under ``RELAYPUSH_CREDENTIALS_KEY`` (``relaypush tenants
    rotate-key``); ``ConfigError`` without a key or a database."""
    async with open_credential_store(settings, database_url) as store:
        if store is None:
            raise ConfigError("rotating needs RELAYPUSH_CREDENTIALS_KEY and a database")
        return await store.rotate()
