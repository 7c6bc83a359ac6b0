"""The ``messages`` read model: one row per notification and its delivery state.

A row's state is the delivery domain's fold of the notification's events
(:func:`relaypush.domain.delivery.evolve`): the same rules the dispatcher and ``audit state``
follow, in one place. A batch reads the rows of the notifications it touches (one statement),
folds its events onto them (:func:`plan`, pure), and writes back every row that changed (one
statement). The accepted event also gives the row its content summary (topic, flags, encrypted or
raw) and its position; a drop gives a ``dropped`` row its reason as ``last_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.rows import class_row

from projections.batch import Batch, recordset
from relaypush.domain.delivery import NotificationState, Status, evolve
from relaypush.domain.events import (
    Event,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    ProviderType,
)

__all__ = ["EVENT_TYPES", "MessageRow", "apply", "plan"]

Key = tuple[str, str, str]

EVENT_TYPES: frozenset[type[Event]] = frozenset(
    {
        NotificationAccepted,
        NotificationDropped,
        NotificationDuplicate,
        NotificationDelivered,
        NotificationDeliveryFailed,
    }
)
"""The events this read model takes."""

_COLUMNS = (
    "tenant_id",
    "client_id",
    "message_id",
    "topic",
    "flags",
    "flag_names",
    "encrypted",
    "raw",
    "status",
    "attempts",
    "duplicates",
    "provider",
    "provider_id",
    "last_error",
    "next_attempt_at",
    "accepted_at",
    "delivered_at",
    "failed_at",
    "updated_at",
    "accepted_position",
)


class MessageRow(msgspec.Struct, kw_only=True, gc=False):
    """One row of ``messages``, as read and as written."""

    tenant_id: str
    client_id: str
    message_id: str
    topic: str | None = None
    flags: int = 0
    flag_names: list[str] = msgspec.field(default_factory=list)
    encrypted: bool = False
    raw: bool = False
    status: Status
    attempts: int = 0
    duplicates: int = 0
    provider: ProviderType | None = None
    provider_id: str | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    accepted_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    updated_at: datetime
    accepted_position: int | None = None

    @property
    def key(self) -> Key:
        return (self.tenant_id, self.client_id, self.message_id)

    def state(self) -> NotificationState:
        return NotificationState(
            status=self.status,
            attempts=self.attempts,
            duplicates=self.duplicates,
            provider=self.provider,
            provider_id=self.provider_id,
            last_error=self.last_error,
            next_attempt_at=self.next_attempt_at,
            accepted_at=self.accepted_at,
            delivered_at=self.delivered_at,
            failed_at=self.failed_at,
        )


MessageEvent = (
    NotificationAccepted
    | NotificationDropped
    | NotificationDuplicate
    | NotificationDelivered
    | NotificationDeliveryFailed
)


def _next_row(row: MessageRow | None, position: int, event: MessageEvent) -> MessageRow | None:
    """``row`` after ``event`` (None: the event changes nothing)."""
    before = row.state() if row is not None else NotificationState()
    after = evolve(before, event)
    if after is before or after.status is None:
        return None
    fields: dict[str, Any] = {
        "status": after.status,
        "attempts": after.attempts,
        "duplicates": after.duplicates,
        "provider": after.provider,
        "provider_id": after.provider_id,
        "last_error": after.last_error,
        "next_attempt_at": after.next_attempt_at,
        "accepted_at": after.accepted_at,
        "delivered_at": after.delivered_at,
        "failed_at": after.failed_at,
        "updated_at": event.occurred_at,
    }
    if isinstance(event, NotificationAccepted):  # it took effect: the content is this one's
        fields |= {
            "topic": event.topic,
            "flags": event.flags,
            "flag_names": list(event.flag_names),
            "encrypted": event.encrypted,
            "raw": event.raw is not None,
            "accepted_position": position,
        }
    if row is None:
        return MessageRow(
            tenant_id=event.tenant_id,
            client_id=event.client_id,
            message_id=event.message_id,
            **fields,
        )
    return msgspec.structs.replace(row, **fields)


def keys_of(batch: Batch) -> list[Key]:
    """The notifications a batch touches, each once."""
    found: dict[Key, None] = {}
    for _, event in batch:
        if isinstance(event, MessageEvent):
            found[(event.tenant_id, event.client_id, event.message_id)] = None
    return list(found)


def plan(batch: Batch, existing: Mapping[Key, MessageRow]) -> list[MessageRow]:
    """The rows a batch changes, folded from ``existing`` (the rows already in the table)."""
    changed: dict[Key, MessageRow] = {}
    for position, event in batch:
        if not isinstance(event, MessageEvent):
            continue
        key = (event.tenant_id, event.client_id, event.message_id)
        row = changed.get(key) or existing.get(key)
        new = _next_row(row, position, event)
        if new is not None:
            changed[key] = new
    return list(changed.values())


class _Key(msgspec.Struct):
    tenant_id: str
    client_id: str
    message_id: str


@cache
def _read_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "SELECT {columns} FROM {table} AS m JOIN json_to_recordset(%s::json)"
        " AS k(tenant_id text, client_id text, message_id text)"
        " USING (tenant_id, client_id, message_id)"
    ).format(
        columns=sql.SQL(", ").join(sql.Identifier("m", c) for c in _COLUMNS),
        table=sql.Identifier(schema, "messages"),
    )


@cache
def _write_sql(schema: str) -> sql.Composed:
    types = {
        "flags": "bigint",
        "flag_names": "text[]",
        "encrypted": "boolean",
        "raw": "boolean",
        "attempts": "integer",
        "duplicates": "integer",
        "next_attempt_at": "timestamptz",
        "accepted_at": "timestamptz",
        "delivered_at": "timestamptz",
        "failed_at": "timestamptz",
        "updated_at": "timestamptz",
        "accepted_position": "bigint",
    }
    keys = {"tenant_id", "client_id", "message_id"}
    return sql.SQL(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM json_to_recordset(%s::json)"
        " AS u({definitions}) ON CONFLICT (tenant_id, client_id, message_id) DO UPDATE SET {sets}"
    ).format(
        table=sql.Identifier(schema, "messages"),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in _COLUMNS),
        definitions=sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types.get(c, "text")))
            for c in _COLUMNS
        ),
        sets=sql.SQL(", ").join(
            sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in _COLUMNS
            if c not in keys
        ),
    )


async def apply(cur: psycopg.AsyncCursor[Any], schema: str, batch: Batch) -> None:
    """Apply a batch to ``<schema>.messages``: read the rows it touches, fold, write back."""
    keys = keys_of(batch)
    if not keys:
        return
    wanted = recordset([_Key(*key) for key in keys])
    async with cur.connection.cursor(row_factory=class_row(MessageRow)) as reader:
        await reader.execute(_read_sql(schema), (wanted,))
        existing = {row.key: row for row in await reader.fetchall()}
    changed = plan(batch, existing)
    if changed:
        await cur.execute(_write_sql(schema), (recordset(changed),))
