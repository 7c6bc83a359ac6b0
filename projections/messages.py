"""The ``messages`` read model: one row per notification and its delivery state.

``notification.accepted`` inserts a pending row (or revives a ``dropped`` one: the client
registered after all); ``notification.dropped`` inserts a ``dropped`` row if none exists;
``notification.duplicate`` counts; ``notification.delivered`` marks it sent; and
``notification.delivery_failed`` records the attempt, and fails the row only when permanent.

A batch is folded per message (pure, :func:`plan`) into one :class:`MessageChange`: the row to
insert if any, then the changes that follow it. One statement writes a whole batch: rows new to
the table are inserted in their final state, rows already there are updated. When a message's
events in a batch cannot be composed that way (an outcome before its row exists, a drop after an
outcome: never seen in a well-formed log), the fold starts a new *round*, so that the result is
always exactly that of applying the events one by one, whatever the batch boundaries.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, Literal

import msgspec
import psycopg
from psycopg import sql

from projections.batch import Batch, recordset
from relaypush.domain.events import (
    Event,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
)

__all__ = ["EVENT_TYPES", "MessageChange", "apply", "plan"]

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


class MessageChange(msgspec.Struct, omit_defaults=True, gc=False):
    """What a batch does to one message: insert a row (``kind`` set: ``accepted`` replaces a
    ``dropped`` row, ``dropped`` only fills a gap), then change it (``updated_at`` set).

    Fields left at their default change nothing; ``set_*`` flags tell a ``None`` to write from
    a ``None`` to leave alone. Encoded with defaults omitted, the SQL reads absent keys as NULL.
    """

    tenant_id: str
    client_id: str
    message_id: str
    kind: Literal["accepted", "dropped"] | None = None
    topic: str | None = None
    flags: int = 0
    flag_names: tuple[str, ...] = ()
    encrypted: bool = False
    raw: bool = False
    drop_reason: str | None = None
    accepted_at: datetime | None = None
    accepted_position: int | None = None
    inserted_at: datetime | None = None
    duplicates: int = 0
    status: str | None = None
    provider: str | None = None
    provider_id: str | None = None
    set_provider_id: bool = False
    attempts: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    set_next_attempt_at: bool = False
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    updated_at: datetime | None = None


def _accepted(event: NotificationAccepted, position: int) -> MessageChange:
    return MessageChange(
        tenant_id=event.tenant_id,
        client_id=event.client_id,
        message_id=event.message_id,
        kind="accepted",
        topic=event.topic,
        flags=event.flags,
        flag_names=event.flag_names,
        encrypted=event.encrypted,
        raw=event.raw is not None,
        accepted_at=event.occurred_at,
        accepted_position=position,
        inserted_at=event.occurred_at,
    )


def _dropped(event: NotificationDropped) -> MessageChange:
    return MessageChange(
        tenant_id=event.tenant_id,
        client_id=event.client_id,
        message_id=event.message_id,
        kind="dropped",
        drop_reason=event.reason,
        inserted_at=event.occurred_at,
    )


def plan(batch: Batch) -> list[list[MessageChange]]:
    """Fold a batch into rounds holding at most one change per message."""
    rounds: list[list[MessageChange]] = []
    changes: dict[Key, MessageChange] = {}
    for position, event in batch:
        if not isinstance(
            event,
            NotificationAccepted
            | NotificationDropped
            | NotificationDuplicate
            | NotificationDelivered
            | NotificationDeliveryFailed,
        ):
            continue
        key = (event.tenant_id, event.client_id, event.message_id)
        change = changes.get(key)
        if isinstance(event, NotificationAccepted | NotificationDropped):
            if change is not None and (
                change.kind is None  # outcomes for a row that may not exist yet
                or (
                    change.kind == "dropped"
                    and change.updated_at is not None
                    and isinstance(event, NotificationAccepted)
                )
            ):
                rounds.append(list(changes.values()))
                changes = {}
                change = None
            if change is None:
                changes[key] = (
                    _accepted(event, position)
                    if isinstance(event, NotificationAccepted)
                    else _dropped(event)
                )
            elif change.kind == "dropped" and isinstance(event, NotificationAccepted):
                changes[key] = _accepted(event, position)
            # otherwise the row exists once this change's insert ran: nothing to do
            continue
        if change is None:
            change = changes[key] = MessageChange(
                event.tenant_id, event.client_id, event.message_id
            )
        _evolve(change, event)
    if changes:
        rounds.append(list(changes.values()))
    return rounds


def _evolve(
    change: MessageChange,
    event: NotificationDuplicate | NotificationDelivered | NotificationDeliveryFailed,
) -> None:
    change.updated_at = event.occurred_at
    match event:
        case NotificationDuplicate():
            change.duplicates += 1
        case NotificationDelivered():
            change.status = "sent"
            change.provider = event.provider
            change.provider_id = event.provider_id
            change.set_provider_id = True
            change.attempts = event.attempt
            change.next_attempt_at = None
            change.set_next_attempt_at = True
            change.delivered_at = event.occurred_at
        case NotificationDeliveryFailed():
            if event.provider is not None:
                change.provider = event.provider
            change.attempts = event.attempt
            change.last_error = event.reason
            change.next_attempt_at = event.next_attempt_at
            change.set_next_attempt_at = True
            if event.permanent:
                change.status = "failed"
                change.failed_at = event.occurred_at


_REVIVE = sql.SQL("(u.kind = 'accepted' AND m.status = 'dropped')")
"""Whether an accepted notification takes over a row its earlier drop left (NULL: no)."""


@cache
def _write_sql(schema: str) -> sql.Composed:
    """Insert new rows in their final state; update the rows that were there before (the
    ``UPDATE`` does not see what the ``INSERT`` of the same statement added)."""
    return sql.SQL(
        """
        WITH u AS (
            SELECT * FROM json_to_recordset(%s::json) AS u(
                tenant_id text, client_id text, message_id text, kind text, topic text,
                flags bigint, flag_names text[], encrypted boolean, raw boolean,
                drop_reason text, accepted_at timestamptz, accepted_position bigint,
                inserted_at timestamptz, duplicates integer, status text, provider text,
                provider_id text, set_provider_id boolean, attempts integer, last_error text,
                next_attempt_at timestamptz, set_next_attempt_at boolean,
                delivered_at timestamptz, failed_at timestamptz, updated_at timestamptz)
        ),
        inserted AS (
            INSERT INTO {table} (
                tenant_id, client_id, message_id, topic, flags, flag_names, encrypted, raw,
                status, attempts, duplicates, provider, provider_id, last_error,
                next_attempt_at, accepted_at, delivered_at, failed_at, updated_at,
                accepted_position)
            SELECT tenant_id, client_id, message_id, topic, coalesce(flags, 0),
                coalesce(flag_names, '{{}}'), coalesce(encrypted, false), coalesce(raw, false),
                coalesce(status, CASE kind WHEN 'accepted' THEN 'pending' ELSE 'dropped' END),
                coalesce(attempts, 0), coalesce(duplicates, 0), provider,
                CASE WHEN set_provider_id THEN provider_id END,
                coalesce(last_error, drop_reason),
                CASE WHEN set_next_attempt_at THEN next_attempt_at END,
                accepted_at, delivered_at, failed_at, coalesce(updated_at, inserted_at),
                accepted_position
            FROM u WHERE kind IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        UPDATE {table} AS m SET
            topic = CASE WHEN {revive} THEN u.topic ELSE m.topic END,
            flags = CASE WHEN {revive} THEN coalesce(u.flags, 0) ELSE m.flags END,
            flag_names = CASE WHEN {revive} THEN coalesce(u.flag_names, '{{}}')
                              ELSE m.flag_names END,
            encrypted = CASE WHEN {revive} THEN coalesce(u.encrypted, false)
                             ELSE m.encrypted END,
            raw = CASE WHEN {revive} THEN coalesce(u.raw, false) ELSE m.raw END,
            accepted_at = CASE WHEN {revive} THEN u.accepted_at ELSE m.accepted_at END,
            accepted_position = CASE WHEN {revive} THEN u.accepted_position
                                     ELSE m.accepted_position END,
            status = coalesce(u.status, CASE WHEN {revive} THEN 'pending' ELSE m.status END),
            last_error = CASE WHEN {revive} THEN u.last_error
                              ELSE coalesce(u.last_error, m.last_error) END,
            updated_at = coalesce(u.updated_at, CASE WHEN {revive} THEN u.inserted_at
                                                     ELSE m.updated_at END),
            duplicates = m.duplicates + coalesce(u.duplicates, 0),
            attempts = coalesce(u.attempts, m.attempts),
            provider = coalesce(u.provider, m.provider),
            provider_id = CASE WHEN u.set_provider_id THEN u.provider_id ELSE m.provider_id END,
            next_attempt_at = CASE WHEN u.set_next_attempt_at THEN u.next_attempt_at
                                   ELSE m.next_attempt_at END,
            delivered_at = coalesce(u.delivered_at, m.delivered_at),
            failed_at = coalesce(u.failed_at, m.failed_at)
        FROM u
        WHERE m.tenant_id = u.tenant_id AND m.client_id = u.client_id
            AND m.message_id = u.message_id AND (u.updated_at IS NOT NULL OR {revive})
        """
    ).format(table=sql.Identifier(schema, "messages"), revive=_REVIVE)


async def apply(cur: psycopg.AsyncCursor[Any], schema: str, batch: Batch) -> None:
    """Apply a batch to ``<schema>.messages``: one statement per round, one round usually."""
    for changes in plan(batch):
        await cur.execute(_write_sql(schema), (recordset(changes),))
