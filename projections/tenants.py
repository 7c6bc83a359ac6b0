"""The ``tenants`` read model: lifecycle, suspension and credential fingerprints per tenant.

Every ``tenant.*`` event upserts its tenant's row (a tenant configured outside the log, such as
the default one, gets a row on its first event, with no ``created_at``). Secrets never reach the
log, so only fingerprints are kept. A batch is folded per tenant into the columns it assigns, last
value winning (pure, :func:`plan`); tenants assigning the same columns share one statement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from projections.batch import Batch
from relaypush.domain.events import (
    Event,
    TenantCarriedForward,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantDeleted,
    TenantSuspended,
    TenantUnsuspended,
)

__all__ = ["EVENT_TYPES", "TenantUpsert", "apply", "assignments", "plan"]

EVENT_TYPES: frozenset[type[Event]] = frozenset(
    {
        TenantCreated,
        TenantCredentialsChanged,
        TenantCredentialsRemoved,
        TenantSuspended,
        TenantUnsuspended,
        TenantDeleted,
        TenantCarriedForward,
    }
)
"""The events this read model takes."""

_FINGERPRINT_COLUMN = {
    "apns": "apns_fingerprint",
    "fcm_v1": "fcm_fingerprint",
    "webpush": "webpush_fingerprint",
}


@dataclass(frozen=True, slots=True)
class TenantUpsert:
    """Insert a tenant's row or assign ``values`` (column name to value) to it."""

    tenant_id: str
    values: Mapping[str, object]


def assignments(event: Event) -> dict[str, object] | None:
    """The columns one tenant event assigns, or None for an event of another kind."""
    match event:
        case TenantCreated():
            return {"created_at": event.occurred_at, "deleted_at": None}
        case TenantCredentialsChanged():
            return {_FINGERPRINT_COLUMN[event.kind]: event.fingerprint}
        case TenantCredentialsRemoved():
            return {_FINGERPRINT_COLUMN[event.kind]: None}
        case TenantSuspended():
            return {"suspended": True, "suspended_reason": event.reason}
        case TenantUnsuspended():
            return {"suspended": False, "suspended_reason": None}
        case TenantDeleted():
            return {"deleted_at": event.occurred_at}
        case TenantCarriedForward():
            carried: dict[str, str] = {c.kind: c.fingerprint for c in event.credentials}
            return {
                "created_at": event.created_at,
                "suspended": event.suspended,
                "suspended_reason": event.suspended_reason,
                **{column: carried.get(kind) for kind, column in _FINGERPRINT_COLUMN.items()},
            }
        case _:
            return None


def plan(batch: Batch) -> list[TenantUpsert]:
    """Fold a batch into one upsert per tenant, in order of first appearance."""
    merged: dict[str, dict[str, object]] = {}
    for _, event in batch:
        values = assignments(event)
        if values is not None:
            merged.setdefault(event.tenant_id, {}).update(values)
    return [TenantUpsert(tenant_id, values) for tenant_id, values in merged.items()]


def _text(value: object) -> object:
    """``value`` as PostgreSQL can store it: text cannot hold NUL, so a NUL becomes U+FFFD (the
    same on every replay, as :func:`projections.batch.recordset` does for the other tables)
    rather than failing the batch, and with it the projection, forever."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


@cache
def _upsert_sql(schema: str, names: tuple[str, ...]) -> sql.Composed:
    targets = [sql.Identifier(name) for name in names]
    return sql.SQL(
        "INSERT INTO {table} AS t (tenant_id, {columns}) VALUES (%s, {params})"
        " ON CONFLICT (tenant_id) DO UPDATE SET {assign}"
    ).format(
        table=sql.Identifier(schema, "tenants"),
        columns=sql.SQL(", ").join(targets),
        params=sql.SQL(", ").join(sql.Placeholder() for _ in names),
        assign=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(t) for t in targets),
    )


async def apply(cur: psycopg.AsyncCursor[Any], schema: str, batch: Batch) -> None:
    """Apply a batch to ``<schema>.tenants``: one statement per distinct set of columns."""
    groups: defaultdict[tuple[str, ...], list[tuple[object, ...]]] = defaultdict(list)
    for upsert in plan(batch):
        names = tuple(sorted(upsert.values))
        groups[names].append((_text(upsert.tenant_id), *(_text(upsert.values[n]) for n in names)))
    for names, rows in groups.items():
        await cur.executemany(_upsert_sql(schema, names), rows)
