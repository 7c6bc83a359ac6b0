"""The pure folds behind the appliers: a batch becomes few, exact row changes.

What the SQL then does with them is covered by ``tests/integration/test_projections.py``; here
the folds are checked to compose events the way one-by-one application would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventstore import RecordedEvent
from projections import devices, inbox, messages, tenants
from projections.batch import decode_records, recordset
from projections.runner import default_durable
from projections.schema import check_schema_name, migrations
from relaypush.domain.events import (
    ClientRegistered,
    ClientUnregistered,
    Event,
    InboxRead,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    NotifyMessage,
    RawMessage,
    TenantCreated,
    TenantCredentialsChanged,
    TenantCredentialsRemoved,
    TenantDeleted,
    TenantSuspended,
    TenantUnsuspended,
    encode_event,
)
from relaypush.domain.streams import subject_for

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def registered(n: int, client: str = "c1", token: str = "tok") -> ClientRegistered:
    return ClientRegistered(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id=client, provider="fcm",
        token=token,
    )  # fmt: skip


def unregistered(n: int, client: str = "c1") -> ClientUnregistered:
    return ClientUnregistered(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id=client, reason="requested"
    )


def accepted(n: int, message: str = "m1", **fields: object) -> NotificationAccepted:
    return NotificationAccepted(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id="c1", message_id=message,
        dedup_key="k", topic="topic", **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def duplicate(n: int, message: str = "m1") -> NotificationDuplicate:
    return NotificationDuplicate(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id="c1", message_id=message,
        dedup_key="k",
    )  # fmt: skip


def dropped(n: int, message: str = "m1") -> NotificationDropped:
    return NotificationDropped(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id="c1", message_id=message,
        reason="client_not_registered",
    )  # fmt: skip


def delivered(n: int, message: str = "m1") -> NotificationDelivered:
    return NotificationDelivered(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id="c1", message_id=message,
        provider="fcm", provider_id="p-1", attempt=2, latency_ms=3.0,
    )  # fmt: skip


def failed(n: int, *, permanent: bool, message: str = "m1") -> NotificationDeliveryFailed:
    return NotificationDeliveryFailed(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id="c1", message_id=message,
        provider=None, attempt=1, permanent=permanent, reason="boom",
        next_attempt_at=None if permanent else at(n + 60),
    )  # fmt: skip


def read(n: int, *ids: str) -> InboxRead:
    return InboxRead(
        event_id=f"e{n}", occurred_at=at(n), tenant_id="t", client_id="c1", message_ids=ids
    )


def positioned(*events: Event) -> list[tuple[int, Event]]:
    return list(enumerate(events, start=1))


def test_devices_fold_to_one_change_per_client_and_keep_the_first_registration() -> None:
    plan = devices.plan(
        positioned(
            registered(1),
            registered(2, token="tok-2"),
            unregistered(3),
            unregistered(4, client="c2"),
        )
    )
    [upsert] = plan.upserts
    assert (upsert.token, upsert.active, upsert.first_registered_at) == ("tok-2", False, at(1))
    assert (upsert.last_registered_at, upsert.unregistered_at, upsert.last_position) == (
        at(2),
        at(3),
        3,
    )
    [unregistration] = plan.unregistrations
    assert (unregistration.client_id, unregistration.last_position) == ("c2", 4)


def test_a_registration_after_an_unregistration_reactivates_and_clears_it() -> None:
    plan = devices.plan(positioned(unregistered(1), registered(2)))
    assert plan.unregistrations == []
    [upsert] = plan.upserts
    assert (upsert.active, upsert.unregistered_at, upsert.unregister_reason) == (True, None, None)


def test_a_tenant_deletion_deactivates_its_devices_before_it_not_after() -> None:
    deleted = TenantDeleted(event_id="e3", occurred_at=at(3), tenant_id="t")
    plan = devices.plan(positioned(registered(1), registered(2, client="c2"), deleted))
    assert {(u.client_id, u.active, u.unregister_reason) for u in plan.upserts} == {
        ("c1", False, "tenant_deleted"),
        ("c2", False, "tenant_deleted"),
    }
    [deletion] = plan.tenant_deletions
    assert (deletion.tenant_id, deletion.last_position) == ("t", 3)

    again = devices.plan(positioned(deleted, registered(9)))
    [upsert] = again.upserts
    assert upsert.active, "a client registered after the tenant was re-created is active"


def test_messages_fold_accept_and_outcomes_into_one_row() -> None:
    [row] = messages.plan(
        positioned(accepted(1), duplicate(2), failed(3, permanent=False), delivered(4)), {}
    )
    assert (row.status, row.accepted_position, row.accepted_at) == ("delivered", 1, at(1))
    assert (row.duplicates, row.attempts, row.last_error, row.next_attempt_at) == (
        1,
        2,
        "boom",
        None,
    )
    assert (row.provider_id, row.delivered_at, row.updated_at) == ("p-1", at(4), at(4))


def test_a_retryable_failure_keeps_a_row_pending_and_a_permanent_one_fails_it() -> None:
    [pending] = messages.plan(positioned(accepted(1), failed(2, permanent=False)), {})
    assert (pending.status, pending.next_attempt_at, pending.last_error) == (
        "pending",
        at(62),
        "boom",
    )
    [final] = messages.plan(positioned(failed(3, permanent=True)), {pending.key: pending})
    assert (final.status, final.failed_at, final.next_attempt_at) == ("failed", at(3), None)


def test_outcomes_fold_onto_the_row_already_in_the_table() -> None:
    [row] = messages.plan(positioned(accepted(1)), {})
    [later] = messages.plan([(7, delivered(7))], {row.key: row})
    assert (later.status, later.accepted_position, later.topic) == ("delivered", 1, "topic")
    # a failure recorded after the delivery changes nothing
    assert messages.plan([(8, failed(8, permanent=True))], {later.key: later}) == []


def test_outcomes_of_a_notification_with_no_row_change_nothing() -> None:
    assert messages.plan(positioned(duplicate(1), delivered(2)), {}) == []


def test_accepted_replaces_a_drop_and_a_later_drop_changes_nothing() -> None:
    [row] = messages.plan(positioned(dropped(1), accepted(2), dropped(3), accepted(4)), {})
    assert (row.status, row.accepted_position, row.last_error) == ("pending", 2, None)
    [drop] = messages.plan(positioned(dropped(1), duplicate(2)), {})
    assert (drop.status, drop.last_error, drop.duplicates) == (
        "dropped",
        "client_not_registered",
        1,
    )
    [revived] = messages.plan([(3, accepted(3))], {drop.key: drop})
    assert (revived.status, revived.duplicates, revived.accepted_position) == ("pending", 1, 3)


def test_inbox_keeps_cleartext_blob_or_raw_body() -> None:
    notify = NotifyMessage(title="Hi", body="there", url="https://x")
    raw = RawMessage(topic="topic", tag=4002, message="raw-body")
    [[clear, secret, raw_entry]] = inbox.plan(
        positioned(
            accepted(1, "clear", notify=notify, blob="Zm9v"),
            accepted(2, "secret", encrypted=True, blob="c2VjcmV0"),
            accepted(3, "raw", raw=raw),
        )
    )
    assert (clear.title, clear.body, clear.url, clear.blob) == ("Hi", "there", "https://x", None)
    assert (secret.title, secret.blob) == (None, "c2VjcmV0")
    assert (raw_entry.raw_message, raw_entry.blob) == ("raw-body", None)


def test_inbox_reads_keep_the_first_time_and_never_precede_their_row() -> None:
    [[change]] = inbox.plan(positioned(accepted(1), read(2, "m1", "m1"), read(3, "m1")))
    assert (change.created_at, change.read_at) == (at(1), at(2))
    rounds = inbox.plan(positioned(read(1, "m1"), accepted(2)))
    assert [[(c.created_at, c.read_at) for c in r] for r in rounds] == [
        [(None, at(1))],
        [(at(2), None)],
    ]


def test_tenant_events_merge_into_assignments_last_value_winning() -> None:
    base = {"occurred_at": T0, "tenant_id": "t"}
    [upsert] = tenants.plan(
        positioned(
            TenantCreated(event_id="1", **base),  # type: ignore[arg-type]
            TenantCredentialsChanged(event_id="2", kind="apns", fingerprint="fp", **base),  # type: ignore[arg-type]
            TenantSuspended(event_id="3", reason="unpaid", **base),  # type: ignore[arg-type]
            TenantUnsuspended(event_id="4", **base),  # type: ignore[arg-type]
            TenantCredentialsRemoved(event_id="5", kind="fcm_v1", **base),  # type: ignore[arg-type]
            registered(6),
        )
    )
    assert dict(upsert.values) == {
        "created_at": T0,
        "deleted_at": None,
        "apns_fingerprint": "fp",
        "fcm_fingerprint": None,
        "suspended": False,
        "suspended_reason": None,
    }


def record(position: int, data: bytes) -> RecordedEvent:
    return RecordedEvent(position, ("t", "x"), data, T0)


def test_decode_records_never_lets_one_record_pass_for_two() -> None:
    one, two = encode_event(registered(1)), encode_event(registered(2, client="c2"))
    batch = decode_records([record(1, one + b"," + two), record(2, one)])
    assert ([p for p, _ in batch.events], batch.skipped) == ([2], 1)


def test_decode_records_orders_dedupes_and_skips_unknown_events() -> None:
    good = encode_event(registered(1))
    batch = decode_records(
        [record(3, good), record(1, good), record(2, b'{"type":"future.thing"}'), record(3, good)]
    )
    assert [p for p, _ in batch.events] == [1, 3]
    assert (batch.last_position, batch.skipped) == (3, 1)
    assert subject_for(batch.events[0][1]) == ("t", "client", "c1")


def test_recordset_is_one_json_object_per_row_without_defaults() -> None:
    [changes] = inbox.plan(positioned(read(2, "m1")))
    assert recordset(changes) == (
        '[{"tenant_id":"t","client_id":"c1","message_id":"m1","read_at":"2025-01-01T00:00:02Z"}]'
    )
    assert recordset([]) == "[]"


def test_recordset_replaces_nul_which_postgresql_text_cannot_hold() -> None:
    [[change]] = inbox.plan(
        positioned(accepted(1, notify=NotifyMessage(title="a\x00b", body="\\u0000")))
    )
    text = recordset([change])
    assert '"title":"a\\ufffdb"' in text
    assert '"body":"\\\\u0000"' in text  # an escaped backslash before "u0000" is left alone


@pytest.mark.parametrize("name", ["", "public", "pg_temp", "x" * 64, "a\x00b"])
def test_unusable_schema_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        check_schema_name(name)


def test_durable_names_are_plain_tokens_and_migrations_are_numbered() -> None:
    assert default_durable("relay.push *x") == "projector-relay_push__x"
    assert migrations()[0].version == 1
    assert all("public" not in m.sql for m in migrations())
