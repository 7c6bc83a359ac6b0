"""The ``inbox`` read model: notifications kept for a client to fetch later, and read marks.

Every ``notification.accepted`` adds a row: title, body, icon, url and type from the cleartext
Notify message when there is one, the blob otherwise (encrypted pushes), the raw message for raw
pushes. ``inbox.read`` marks rows read, keeping the first read time. A batch is folded per row
(pure, :func:`plan`) into one insert and read mark, written by one statement, in rounds as in
:mod:`projections.messages`: a read mark seen before its row starts a new round, so the result
never depends on where the batches were cut.

``client.erased`` nulls the content (title, body, icon, url, type, blob, raw message) of every
row the client has so far; a notification whose content cannot be opened (its client was erased
since) is inserted without content. The batch is cut at each erasure: the rows before it are
written, then erased, then the rest follows.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from projections.batch import Batch, recordset
from relaypush.domain.events import ClientErased, Event, InboxRead, NotificationAccepted

__all__ = ["EVENT_TYPES", "InboxChange", "apply", "plan"]

Key = tuple[str, str, str]

EVENT_TYPES: frozenset[type[Event]] = frozenset({NotificationAccepted, InboxRead, ClientErased})
"""The events this read model takes."""


class InboxChange(msgspec.Struct, omit_defaults=True, gc=False):
    """What a batch does to one inbox row: insert it (``created_at`` set), then mark it read
    (``read_at`` set, kept if the row already was read)."""

    tenant_id: str
    client_id: str
    message_id: str
    topic: str | None = None
    flags: int = 0
    title: str | None = None
    body: str | None = None
    icon: str | None = None
    url: str | None = None
    type: str | None = None
    blob: str | None = None
    raw_message: str | None = None
    created_at: datetime | None = None
    read_at: datetime | None = None

    @classmethod
    def entry(cls, event: NotificationAccepted) -> InboxChange:
        """The row a notification adds to its client's inbox (without content when it is still
        sealed: its client was erased)."""
        if event.sealed is not None:
            return cls(
                tenant_id=event.tenant_id,
                client_id=event.client_id,
                message_id=event.message_id,
                topic=event.topic,
                flags=event.flags,
                created_at=event.occurred_at,
            )
        notify = event.notify
        if notify is None:
            return cls(
                tenant_id=event.tenant_id,
                client_id=event.client_id,
                message_id=event.message_id,
                topic=event.topic,
                flags=event.flags,
                blob=event.blob,
                raw_message=event.raw.message if event.raw is not None else None,
                created_at=event.occurred_at,
            )
        return cls(
            tenant_id=event.tenant_id,
            client_id=event.client_id,
            message_id=event.message_id,
            topic=event.topic,
            flags=event.flags,
            title=notify.title,
            body=notify.body,
            icon=notify.icon,
            url=notify.url,
            type=notify.type,
            raw_message=event.raw.message if event.raw is not None else None,
            created_at=event.occurred_at,
        )


def plan(batch: Batch) -> list[list[InboxChange]]:
    """Fold a batch into rounds holding at most one change per inbox row."""
    rounds: list[list[InboxChange]] = []
    changes: dict[Key, InboxChange] = {}
    for _, event in batch:
        match event:
            case NotificationAccepted():
                key = (event.tenant_id, event.client_id, event.message_id)
                change = changes.get(key)
                if change is not None and change.created_at is None:
                    # read before its row existed: that mark must not reach the new row
                    rounds.append(list(changes.values()))
                    changes = {}
                    change = None
                if change is None:
                    changes[key] = InboxChange.entry(event)
            case InboxRead():
                for message_id in event.message_ids:
                    key = (event.tenant_id, event.client_id, message_id)
                    change = changes.get(key)
                    if change is None:
                        changes[key] = InboxChange(*key, read_at=event.occurred_at)
                    elif change.read_at is None:
                        change.read_at = event.occurred_at
            case _:
                pass
    if changes:
        rounds.append(list(changes.values()))
    return rounds


@cache
def _write_sql(schema: str) -> sql.Composed:
    """Insert new rows (read or not); mark the rows that were there before (the ``UPDATE``
    does not see what the ``INSERT`` of the same statement added)."""
    return sql.SQL(
        """
        WITH u AS (
            SELECT * FROM json_to_recordset(%s::json) AS u(
                tenant_id text, client_id text, message_id text, topic text, flags bigint,
                title text, body text, icon text, url text, type text, blob text,
                raw_message text, created_at timestamptz, read_at timestamptz)
        ),
        inserted AS (
            INSERT INTO {table} (
                tenant_id, client_id, message_id, topic, flags, title, body, icon, url, type,
                blob, raw_message, created_at, read, read_at)
            SELECT tenant_id, client_id, message_id, topic, coalesce(flags, 0), title, body,
                icon, url, type, blob, raw_message, created_at, read_at IS NOT NULL, read_at
            FROM u WHERE created_at IS NOT NULL
            ON CONFLICT DO NOTHING
        )
        UPDATE {table} AS i SET read = true, read_at = u.read_at
        FROM u
        WHERE i.tenant_id = u.tenant_id AND i.client_id = u.client_id
            AND i.message_id = u.message_id AND u.read_at IS NOT NULL AND NOT i.read
        """
    ).format(table=sql.Identifier(schema, "inbox"))


@cache
def _erase_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        """
        UPDATE {} SET title = NULL, body = NULL, icon = NULL, url = NULL, type = NULL,
            blob = NULL, raw_message = NULL
        WHERE tenant_id = %s AND client_id = %s
        """
    ).format(sql.Identifier(schema, "inbox"))


async def apply(cur: psycopg.AsyncCursor[Any], schema: str, batch: Batch) -> None:
    """Apply a batch to ``<schema>.inbox``: one statement per round, one round usually, and
    one per erasure."""
    start = 0
    for index, (_, event) in enumerate(batch):
        if isinstance(event, ClientErased):
            for changes in plan(batch[start:index]):
                await cur.execute(_write_sql(schema), (recordset(changes),))
            await cur.execute(_erase_sql(schema), (event.tenant_id, event.client_id))
            start = index + 1
    for changes in plan(batch[start:]):
        await cur.execute(_write_sql(schema), (recordset(changes),))
