"""The ``devices`` read model: one row per client, active or not.

``client.registered`` upserts an active device (its first registration time is kept, a former
unregistration is cleared); ``client.unregistered`` marks a known device inactive with time and
reason; ``client.erased`` nulls the token (the erasure unregistered the client just before);
``tenant.deleted`` marks every device of the tenant known until then inactive (reason
``tenant_deleted``: a re-created tenant starts without clients). A
registration whose token cannot be opened (its client was erased since) stores a null token.
A batch is first folded per client into one final change (pure, :func:`plan`), then written
with at most three statements whatever its size: an upsert for clients that registered in the
batch, an update for clients that only unregistered, one for clients only erased.
``last_position`` guards every write, so a row never moves backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from projections.batch import Batch, recordset
from relaypush.domain.events import (
    ClientCarriedForward,
    ClientErased,
    ClientRegistered,
    ClientUnregistered,
    Event,
    TenantDeleted,
)

__all__ = [
    "EVENT_TYPES",
    "DeviceErasure",
    "DevicePlan",
    "DeviceUnregistration",
    "DeviceUpsert",
    "apply",
    "plan",
]

EVENT_TYPES: frozenset[type[Event]] = frozenset(
    {ClientRegistered, ClientCarriedForward, ClientUnregistered, ClientErased, TenantDeleted}
)
"""The events this read model takes."""


class DeviceUpsert(msgspec.Struct, gc=False):
    """A whole device row, written over whatever is there (except ``first_registered_at``)."""

    tenant_id: str
    client_id: str
    provider: str
    token: str | None
    always_raw: bool
    active: bool
    first_registered_at: datetime
    last_registered_at: datetime
    unregistered_at: datetime | None
    unregister_reason: str | None
    last_position: int


class DeviceUnregistration(msgspec.Struct, gc=False):
    """An unregistration of a device registered before the batch (if it is known at all)."""

    tenant_id: str
    client_id: str
    unregistered_at: datetime
    reason: str
    last_position: int
    erased: bool = False


class DeviceErasure(msgspec.Struct, gc=False):
    """The token of a device known before the batch is erased."""

    tenant_id: str
    client_id: str
    last_position: int


class TenantDeletion(msgspec.Struct, gc=False):
    """Every device of a tenant written before ``last_position`` becomes inactive."""

    tenant_id: str
    unregistered_at: datetime
    last_position: int


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """What one batch does to ``devices``: at most one change per client, then deletions of
    whole tenants (guarded by position, so devices registered after a deletion stay)."""

    upserts: list[DeviceUpsert]
    unregistrations: list[DeviceUnregistration]
    erasures: list[DeviceErasure] = field(default_factory=list)
    tenant_deletions: list[TenantDeletion] = field(default_factory=list)


def plan(batch: Batch) -> DevicePlan:
    """Fold a batch of ``(position, event)`` in position order into one change per client."""
    changes: dict[tuple[str, str], DeviceUpsert | DeviceUnregistration | DeviceErasure] = {}
    deletions: list[TenantDeletion] = []
    for position, event in batch:
        match event:
            case TenantDeleted():
                for change in changes.values():
                    if (
                        isinstance(change, DeviceUpsert)
                        and change.tenant_id == event.tenant_id
                        and change.active
                    ):
                        change.active = False
                        change.unregistered_at = event.occurred_at
                        change.unregister_reason = "tenant_deleted"
                        change.last_position = position
                deletions.append(TenantDeletion(event.tenant_id, event.occurred_at, position))
            case ClientRegistered():
                key = (event.tenant_id, event.client_id)
                previous = changes.get(key)
                first = (
                    previous.first_registered_at
                    if isinstance(previous, DeviceUpsert)
                    else event.occurred_at
                )
                changes[key] = DeviceUpsert(
                    tenant_id=event.tenant_id,
                    client_id=event.client_id,
                    provider=event.provider,
                    token=event.token if event.sealed is None else None,
                    always_raw=event.always_raw,
                    active=True,
                    first_registered_at=first,
                    last_registered_at=event.occurred_at,
                    unregistered_at=None,
                    unregister_reason=None,
                    last_position=position,
                )
            case ClientUnregistered():
                key = (event.tenant_id, event.client_id)
                previous = changes.get(key)
                if isinstance(previous, DeviceUpsert):
                    previous.active = False
                    previous.unregistered_at = event.occurred_at
                    previous.unregister_reason = event.reason
                    previous.last_position = position
                else:
                    changes[key] = DeviceUnregistration(
                        tenant_id=event.tenant_id,
                        client_id=event.client_id,
                        unregistered_at=event.occurred_at,
                        reason=event.reason,
                        last_position=position,
                        erased=isinstance(previous, DeviceErasure)
                        or (isinstance(previous, DeviceUnregistration) and previous.erased),
                    )
            case ClientErased():
                key = (event.tenant_id, event.client_id)
                previous = changes.get(key)
                if isinstance(previous, DeviceUpsert | DeviceUnregistration):
                    if isinstance(previous, DeviceUpsert):
                        previous.token = None
                    else:
                        previous.erased = True
                    previous.last_position = position
                else:
                    changes[key] = DeviceErasure(event.tenant_id, event.client_id, position)
            case _:
                pass
    upserts = [c for c in changes.values() if isinstance(c, DeviceUpsert)]
    unregistrations = [c for c in changes.values() if isinstance(c, DeviceUnregistration)]
    erasures = [c for c in changes.values() if isinstance(c, DeviceErasure)]
    return DevicePlan(upserts, unregistrations, erasures, deletions)


@cache
def _upsert_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        INSERT INTO {} AS d (
            tenant_id, client_id, provider, token, always_raw, active,
            first_registered_at, last_registered_at, unregistered_at, unregister_reason,
            last_position)
        SELECT * FROM json_to_recordset(%s::json) AS u(
            tenant_id text, client_id text, provider text, token text, always_raw boolean,
            active boolean, first_registered_at timestamptz, last_registered_at timestamptz,
            unregistered_at timestamptz, unregister_reason text, last_position bigint)
        ON CONFLICT (tenant_id, client_id) DO UPDATE SET
            provider = excluded.provider,
            token = excluded.token,
            always_raw = excluded.always_raw,
            active = excluded.active,
            last_registered_at = excluded.last_registered_at,
            unregistered_at = excluded.unregistered_at,
            unregister_reason = excluded.unregister_reason,
            last_position = excluded.last_position
        WHERE d.last_position < excluded.last_position
        """
    ).format(sql.Identifier(schema, "devices"))


@cache
def _unregister_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        UPDATE {} AS d SET
            active = false,
            unregistered_at = u.unregistered_at,
            unregister_reason = u.reason,
            token = CASE WHEN u.erased THEN NULL ELSE d.token END,
            last_position = u.last_position
        FROM json_to_recordset(%s::json) AS u(
            tenant_id text, client_id text, unregistered_at timestamptz, reason text,
            last_position bigint, erased boolean)
        WHERE d.tenant_id = u.tenant_id AND d.client_id = u.client_id
            AND d.last_position < u.last_position
        """
    ).format(sql.Identifier(schema, "devices"))


@cache
def _erase_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        UPDATE {} AS d SET token = NULL, last_position = u.last_position
        FROM json_to_recordset(%s::json) AS u(
            tenant_id text, client_id text, last_position bigint)
        WHERE d.tenant_id = u.tenant_id AND d.client_id = u.client_id
            AND d.last_position < u.last_position
        """
    ).format(sql.Identifier(schema, "devices"))


@cache
def _tenant_deleted_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        UPDATE {} AS d SET
            active = false,
            unregistered_at = u.unregistered_at,
            unregister_reason = 'tenant_deleted',
            last_position = u.last_position
        FROM json_to_recordset(%s::json) AS u(
            tenant_id text, unregistered_at timestamptz, last_position bigint)
        WHERE d.tenant_id = u.tenant_id AND d.active AND d.last_position < u.last_position
        """
    ).format(sql.Identifier(schema, "devices"))


async def apply(cur: psycopg.AsyncCursor[Any], schema: str, batch: Batch) -> None:
    """Apply a batch to ``<schema>.devices`` in at most four statements."""
    changes = plan(batch)
    if changes.upserts:
        await cur.execute(_upsert_sql(schema), (recordset(changes.upserts),))
    if changes.unregistrations:
        await cur.execute(_unregister_sql(schema), (recordset(changes.unregistrations),))
    if changes.erasures:
        await cur.execute(_erase_sql(schema), (recordset(changes.erasures),))
    if changes.tenant_deletions:
        await cur.execute(_tenant_deleted_sql(schema), (recordset(changes.tenant_deletions),))
