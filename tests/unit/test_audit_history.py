"""History, time travel, exports and the admin routes, over the in-memory log."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventstore import REST, InMemoryEventLog, RecordedEvent
from relaypush.audit import (
    RECORDED_AT_HEADER,
    ClientFold,
    ExportFormatError,
    HistoryQuery,
    ImportRefused,
    QueryError,
    client_state_at,
    export_line,
    export_log,
    follow_history,
    history,
    history_page,
    import_export,
    parse_at,
    read_export,
    recorded_time,
)
from relaypush.audit.history import render_entry, subject_filters
from relaypush.config import Settings
from relaypush.domain.events import AUDIT_TENANT, AuditCheckpoint, encode_event
from relaypush.http.app import create_app
from relaypush.logs import fingerprint
from relaypush.service import RelayService
from tests.asgi import asgi_client
from tests.audit_story import DEFAULT, STORY, append_story


@pytest.fixture(name="story_log")
async def fx_story_log() -> InMemoryEventLog:
    log = InMemoryEventLog()
    await append_story(log)
    return log


async def positions(log: InMemoryEventLog, **query: Any) -> list[int]:
    return [e.position async for e in history(log, HistoryQuery(**query))]


# -- history -----------------------------------------------------------------------------------


async def test_history_of_a_client_in_any_tenant_or_one(story_log: InMemoryEventLog) -> None:
    everything_w1 = [2, 4, 5, 6, 7, 10, 12, 14, 15, 16, 17]
    assert await positions(story_log, client="w1") == everything_w1
    assert await positions(story_log, client="w1", tenant="acme") == [
        p for p in everything_w1 if p not in (14, 15)
    ]
    assert await positions(story_log, client="w3") == [11]


async def test_history_of_a_notification(story_log: InMemoryEventLog) -> None:
    assert await positions(story_log, notification="m1") == [4, 5, 10, 15]
    assert await positions(story_log, notification="m1", tenant="acme") == [4, 5, 10]
    assert await positions(story_log, notification="m2", client="w1") == [6, 7, 17]
    assert await positions(story_log, notification="m2", client="w2") == []


async def test_history_of_a_tenant_and_of_the_log(story_log: InMemoryEventLog) -> None:
    assert await positions(story_log, tenant=DEFAULT) == [14, 15]
    assert await positions(story_log) == list(range(1, 18))


async def test_history_by_type_and_cursor(story_log: InMemoryEventLog) -> None:
    assert await positions(story_log, types=frozenset({"client.registered"})) == [2, 3, 14, 16]
    assert await positions(
        story_log, client="w1", types=frozenset({"notification.delivered", "inbox.read"})
    ) == [5, 12, 17]
    assert await positions(story_log, client="w1", after=12) == [14, 15, 16, 17]


async def test_history_by_time(story_log: InMemoryEventLog) -> None:
    stored = [r async for r in story_log.read()]
    since, until = stored[4].recorded_at, stored[9].recorded_at
    found = await positions(story_log, since=since, until=until)
    assert found == [r.position for r in stored if since <= r.recorded_at <= until]
    assert found[0] <= 5
    assert found[-1] >= 10


async def test_pages_follow_the_cursor(story_log: InMemoryEventLog) -> None:
    query = HistoryQuery(client="w1", limit=4)
    seen: list[int] = []
    pages = 0
    while True:
        page = await history_page(story_log, query)
        pages += 1
        seen += [e.position for e in page.events]
        if page.next_cursor is None:
            break
        query = dataclasses.replace(query, after=page.next_cursor)
    assert seen == await positions(story_log, client="w1")
    assert pages == 3


async def test_entries_show_cause_and_data_and_never_a_token(story_log: InMemoryEventLog) -> None:
    entries = [e async for e in history(story_log, HistoryQuery(client="w1", tenant="acme"))]
    registered = entries[0]
    assert registered.type == "client.registered"
    assert registered.tenant_id == "acme"
    assert registered.cause == {"request_id": "req-reg-w1"}
    assert registered.data is not None
    assert registered.data["token_fingerprint"] == fingerprint("device-token-w1")
    assert "token" not in registered.data
    accepted = entries[1]
    assert accepted.cause == {"request_id": "req-m1", "message_id": "m1"}
    assert accepted.subject == ["acme", "notification", "w1", "accepted"]
    every = [e async for e in history(story_log, HistoryQuery())]
    assert "device-token" not in json.dumps([e.data for e in every])


def test_queries_are_checked() -> None:
    with pytest.raises(QueryError, match="type"):
        HistoryQuery(types=frozenset({"client.exploded"}))
    with pytest.raises(QueryError, match="limit"):
        HistoryQuery(limit=0)
    with pytest.raises(QueryError, match="since"):
        HistoryQuery(since=datetime(2026, 1, 1))
    with pytest.raises(QueryError, match="until"):
        HistoryQuery(since=datetime(2026, 1, 2, tzinfo=UTC), until=datetime(2026, 1, 1, tzinfo=UTC))
    assert subject_filters(HistoryQuery(tenant="acme")) == [("acme", REST)]
    assert subject_filters(HistoryQuery()) == [(REST,)]


async def test_follow_streams_new_events_until_stopped(story_log: InMemoryEventLog) -> None:
    stop = asyncio.Event()
    caught_up = asyncio.Event()
    found: list[int] = []
    query = HistoryQuery(client="w2", tenant="acme")

    async def follow() -> None:
        async for entry in follow_history(story_log, query, stop, poll_interval=0.01):
            found.append(entry.position)
            if entry.position == 13:
                caught_up.set()
            if entry.position > 17:
                stop.set()

    task = asyncio.create_task(follow())
    await asyncio.wait_for(caught_up.wait(), 5)
    assert found == [3, 8, 9, 13]
    await append_story(story_log, [STORY[0], STORY[2]])  # 18: a tenant event, 19: w2 again
    await asyncio.wait_for(task, 5)
    assert found == [3, 8, 9, 13, 19]


# -- time travel -------------------------------------------------------------------------------


async def test_state_at_positions(story_log: InMemoryEventLog) -> None:
    before = await client_state_at(story_log, "acme", "w1", 1)
    assert not before.registered
    assert before.last_event_position == 0

    at_7 = await client_state_at(story_log, "acme", "w1", 7)
    assert at_7.registered
    assert at_7.provider == "fcm"
    assert at_7.token_fingerprint == fingerprint("device-token-w1")
    assert (at_7.pending.ids, at_7.delivered.ids, at_7.failed.count) == (["m2"], ["m1"], 0)

    now = await client_state_at(story_log, "acme", "w1")
    assert now.token_fingerprint == fingerprint("device-token-w1-new")
    assert (now.pending.count, now.delivered.ids) == (0, ["m1", "m2"])

    w2 = await client_state_at(story_log, "acme", "w2", 13)
    assert not w2.registered
    assert w2.unregister_reason == "token_invalid"
    assert w2.failed.ids == ["m3"]
    assert (await client_state_at(story_log, "acme", "w3")).dropped.ids == ["m4"]


async def test_state_at_a_time(story_log: InMemoryEventLog) -> None:
    stored = [r async for r in story_log.read()]
    at = stored[6].recorded_at  # position 7, and whatever shares its time
    snapshot = await client_state_at(story_log, "acme", "w1", at)
    expected = max(
        r.position
        for r in stored
        if r.recorded_at <= at and r.position in (2, 4, 5, 6, 7, 10, 16, 17)
    )
    assert snapshot.last_event_position == expected
    assert snapshot.at_time == at
    assert parse_at("17") == 17
    assert parse_at("2026-01-01T12:00:00") == datetime(2026, 1, 1, 12, tzinfo=UTC)
    with pytest.raises(QueryError):
        parse_at("yesterday")


def test_the_fold_counts_outcomes() -> None:
    fold = ClientFold()
    for position, event in enumerate(STORY, start=1):
        if getattr(event, "client_id", None) == "w1" and event.tenant_id == "acme":
            fold.apply(position, event)
    snapshot = fold.snapshot("acme", "w1")
    assert snapshot.delivered.ids == ["m1", "m2"]
    assert snapshot.registered_at == STORY[15].occurred_at


# -- export and import -------------------------------------------------------------------------


async def test_an_export_round_trips_through_an_import(story_log: InMemoryEventLog) -> None:
    await story_log.append(("raw",), b"\xff\x00not utf-8", idempotency_key="k", headers={"A": "b"})
    lines = [export_line(r) async for r in story_log.read()]
    first = json.loads(lines[0])
    assert set(first) == {"position", "subject", "recorded_at", "data"}
    assert json.loads(lines[-1])["data_base64"]

    copy = InMemoryEventLog(prefix="other")
    assert await import_export(copy, read_export(lines)) == 18
    originals = [r async for r in story_log.read()]
    imported = [r async for r in copy.read()]
    assert [(r.position, r.subject, r.data, r.idempotency_key) for r in imported] == [
        (r.position, r.subject, r.data, r.idempotency_key) for r in originals
    ]
    assert imported[-1].headers[RECORDED_AT_HEADER]
    assert [recorded_time(r) for r in imported] == [r.recorded_at for r in originals]
    assert [export_line(r) async for r in copy.read()] == lines


async def test_an_import_refuses_a_log_that_is_not_empty(story_log: InMemoryEventLog) -> None:
    lines = [export_line(r) async for r in story_log.read()]
    with pytest.raises(ImportRefused, match="not empty"):
        await import_export(story_log, read_export(lines))
    with pytest.raises(ImportRefused, match="position 2"):
        await import_export(InMemoryEventLog(), read_export(lines[1:]))
    with pytest.raises(ExportFormatError, match="line 2"):
        list(read_export([lines[0], b"{not json\n"]))


async def test_export_log_writes_every_event(story_log: InMemoryEventLog) -> None:
    out = io.BytesIO()
    assert await export_log(story_log, out) == 17
    assert out.getvalue().count(b"\n") == 17


# -- admin routes ------------------------------------------------------------------------------


async def test_admin_routes_need_the_admin_token(story_log: InMemoryEventLog) -> None:
    service = RelayService(story_log, enabled_providers=lambda _t: frozenset({"noop"}))
    app = create_app(settings=Settings(admin_token="s3cret"), service=service, event_log=story_log)
    async with asgi_client(app) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = await http.get("/admin/events", headers=headers)
            assert response.status_code == 401
            assert response.json()["status"] == "FAILED"
            assert response.json()["fields"][0]["field"] == "Authorization"
        auth = {"Authorization": "Bearer s3cret"}
        response = await http.get(
            "/admin/events", params={"client": "w2", "limit": 2}, headers=auth
        )
        assert response.status_code == 200
        body = response.json()
        assert [e["position"] for e in body["events"]] == [3, 8]
        assert body["next_cursor"] == 8
        response = await http.get(
            "/admin/events", params={"client": "w2", "after": 8}, headers=auth
        )
        assert [e["position"] for e in response.json()["events"]] == [9, 13]
        response = await http.get(
            "/admin/events",
            params=[("type", "tenant.created"), ("type", "inbox.read")],
            headers=auth,
        )
        assert [e["position"] for e in response.json()["events"]] == [1, 12]
        for bad in ({"limit": "x"}, {"type": "nope"}, {"since": "soon"}, {"limit": 5000}):
            response = await http.get("/admin/events", params=bad, headers=auth)
            assert response.status_code == 400, bad
            assert response.json()["fields"][0]["location"] == "query"

        response = await http.get(
            "/admin/clients/w1/state", params={"tenant": "acme", "at": 7}, headers=auth
        )
        assert response.status_code == 200
        state = response.json()["state"]
        assert state["registered"] is True
        assert state["pending"] == {"count": 1, "ids": ["m2"]}
        assert state["token_fingerprint"] == fingerprint("device-token-w1")
        response = await http.get("/admin/clients/w1/state", params={"at": "never"}, headers=auth)
        assert response.status_code == 400
        assert (await http.get("/admin/clients/w1/state")).status_code == 401


async def test_admin_routes_are_closed_without_a_token(story_log: InMemoryEventLog) -> None:
    service = RelayService(story_log, enabled_providers=lambda _t: frozenset({"noop"}))
    app = create_app(settings=Settings(), service=service, event_log=story_log)
    async with asgi_client(app) as http:
        response = await http.get("/admin/events", headers={"Authorization": "Bearer "})
        assert response.status_code == 401


def test_a_checkpoint_entry_shows_a_count_of_leaves() -> None:
    checkpoint = AuditCheckpoint(
        event_id="e",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        tenant_id=AUDIT_TENANT,
        covered_from=1,
        covered_to=3,
        head="00" * 32,
        digests=bytes(24),
        key_id="sha256:x",
        signature="00",
    )
    entry = render_entry(
        RecordedEvent(1, ("$audit", "checkpoint"), encode_event(checkpoint), datetime.now(UTC))
    )
    assert entry.type == "audit.checkpoint"
    assert entry.data is not None
    assert entry.data["leaves"] == 3
    assert "digests" not in entry.data
    unknown = render_entry(RecordedEvent(2, ("x",), b"garbage", datetime.now(UTC) - timedelta(1)))
    assert unknown.type == "unknown"
    assert unknown.error
