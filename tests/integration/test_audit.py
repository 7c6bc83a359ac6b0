"""The audit trail over real JetStream and PostgreSQL: export and import reproduce the tables,
the chainer runs behind concurrent writers, verification live and offline, history, time
travel, the admin routes and the ``relaypush audit`` commands.

Each test has its own streams and subject prefixes (named after ``unique_name``), and schemas
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from eventstore import JetStreamEventLog
from projections import compare_schemas, rebuild_into
from relaypush.audit import (
    BreakKind,
    Chainer,
    HistoryQuery,
    SigningKey,
    client_state_at,
    export_log,
    follow_history,
    history,
    history_page,
    import_export,
    read_export,
    verify,
)
from relaypush.audit.cli import add_audit_parser, needs_event_log, run_audit
from relaypush.config import Settings
from relaypush.domain.events import Event
from relaypush.http.app import create_app
from relaypush.logs import fingerprint
from relaypush.service import RelayService
from tests.asgi import asgi_client
from tests.audit_story import STORY, T0, append_story

pytestmark = pytest.mark.integration

KEY = SigningKey.from_hex("33" * 32)
OTHER_KEY = SigningKey.from_hex("44" * 32)


@dataclass(frozen=True)
class Env:
    nats_url: str
    url: str
    name: str
    log: JetStreamEventLog
    opened: list[JetStreamEventLog]

    async def fresh_log(self, suffix: str) -> JetStreamEventLog:
        """Another empty log, on a stream and prefix of its own."""
        name = f"{self.name}{suffix}"
        log = await JetStreamEventLog.connect(self.nats_url, stream=name.upper(), prefix=name)
        self.opened.append(log)
        return log


@pytest_asyncio.fixture(name="env")
async def fx_env(nats_url: str, database_url: str, unique_name: str) -> AsyncIterator[Env]:
    log = await JetStreamEventLog.connect(nats_url, stream=unique_name.upper(), prefix=unique_name)
    env = Env(nats_url, database_url, unique_name, log, [log])
    try:
        yield env
    finally:
        nc = await nats.connect(nats_url)
        try:
            for opened in env.opened:
                await opened.close()
            js = nc.jetstream()
            for info in await js.streams_info():
                name = info.config.name or ""
                if name.startswith(unique_name.upper()):
                    await js.delete_stream(name)
        finally:
            await nc.close()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (unique_name + "%",)
            )
            for (name,) in await cur.fetchall():
                await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


async def export_bytes(log: JetStreamEventLog) -> bytes:
    out = io.BytesIO()
    await export_log(log, out)
    return out.getvalue()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- export and import -------------------------------------------------------------------------


async def test_an_export_imported_into_a_fresh_stream_rebuilds_the_same_tables(env: Env) -> None:
    await append_story(env.log)
    await Chainer(env.log, KEY, every_events=5).catch_up()
    await append_story(env.log, STORY[:3])
    exported = await export_bytes(env.log)

    copy = await env.fresh_log("copy")
    assert await import_export(copy, read_export(exported.splitlines())) == 24
    assert await export_bytes(copy) == exported

    original, imported = f"{env.name}_original", f"{env.name}_imported"
    assert await rebuild_into(env.log, env.url, original) == 24
    assert await rebuild_into(copy, env.url, imported) == 24
    assert await compare_schemas(env.url, original, imported) == []

    report = await verify(copy.read(), [KEY.public_key])
    assert report.ok, report.describe()
    assert report.protected_upto == 17


async def test_an_import_into_a_log_that_is_not_empty_is_refused(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await append_story(env.log, STORY[:2])
    export = tmp_path / "log.jsonl"
    export.write_bytes(await export_bytes(env.log))
    parser = cli_parser()
    assert (
        await run_audit(parser.parse_args(["audit", "import", str(export)]), env.log, SETTINGS) == 1
    )
    assert "not empty" in capsys.readouterr().err
    copy = await env.fresh_log("copy")
    assert await run_audit(parser.parse_args(["audit", "import", str(export)]), copy, SETTINGS) == 0
    assert await copy.last_position() == 2


# -- the chain ---------------------------------------------------------------------------------


async def test_the_chainer_follows_concurrent_writers_and_the_log_verifies(
    env: Env, tmp_path: Path
) -> None:
    chainer = Chainer(env.log, KEY, every_events=7, every_seconds=0.2, poll_interval=0.02)
    stop = asyncio.Event()
    running = asyncio.create_task(chainer.run(stop))

    async def writer(n: int) -> None:
        events: list[Event] = [
            msgspec.structs.replace(STORY[1], event_id=f"w{n}-{i}", client_id=f"w{n}-{i % 3}")
            for i in range(20)
        ]
        await append_story(env.log, events)

    await asyncio.gather(*(writer(n) for n in range(5)))  # 100 events, appended concurrently
    head = await env.log.last_position()

    async def all_covered() -> bool:
        return chainer.covered >= head

    await eventually(all_covered)
    stop.set()
    await asyncio.wait_for(running, 10)

    report = await verify(env.log.read(), [KEY.public_key])
    assert report.ok, report.describe()
    assert report.protected_upto >= 100
    assert report.checkpoints >= 100 // 7

    # offline: an export and the public key alone; then a copy with one event altered
    export = tmp_path / "log.jsonl"
    export.write_bytes(await export_bytes(env.log))
    with export.open("rb") as lines:
        assert (await verify(read_export(lines), [KEY.public_key])).ok
    edited = [json.loads(line) for line in export.read_bytes().splitlines()]
    target = next(line for line in edited[41:] if line["subject"][0] != "$audit")
    target["data"] = target["data"].replace('"w', '"W', 1)
    export.write_text("".join(json.dumps(line) + "\n" for line in edited))
    with export.open("rb") as lines:
        report = await verify(read_export(lines), [KEY.public_key])
    assert report.broken is not None
    assert (report.broken.position, report.broken.kind) == (target["position"], BreakKind.ALTERED)


async def test_two_chainers_on_one_log_append_one_chain(env: Env) -> None:
    await append_story(env.log)
    first = Chainer(env.log, KEY, every_events=4)
    second = Chainer(env.log, KEY, every_events=4)
    await asyncio.gather(first.catch_up(), second.catch_up())
    await append_story(env.log, STORY[:5])
    await asyncio.gather(first.catch_up(), second.catch_up())
    report = await verify(env.log.read(), [KEY.public_key])
    assert report.ok, report.describe()
    assert report.protected_upto >= 17


async def test_a_checkpoint_by_another_key_is_caught_live(env: Env) -> None:
    await append_story(env.log)
    await Chainer(env.log, KEY, every_events=100).catch_up()  # covers 1..17 at 18
    await append_story(env.log, STORY[:2])
    await Chainer(env.log, OTHER_KEY, every_events=100).catch_up()  # covers 18..20 at 21
    report = await verify(env.log.read(), [KEY.public_key])
    assert report.broken is not None
    assert (report.broken.position, report.broken.kind) == (21, BreakKind.BAD_SIGNATURE)
    assert report.protected_upto == 17


# -- history and time travel -------------------------------------------------------------------


async def test_history_and_state_on_jetstream(env: Env) -> None:
    await append_story(env.log)
    found = [e.position async for e in history(env.log, HistoryQuery(client="w1"))]
    assert found == [2, 4, 5, 6, 7, 10, 12, 14, 15, 16, 17]
    found = [e.position async for e in history(env.log, HistoryQuery(notification="m1"))]
    assert found == [4, 5, 10, 15]
    page = await history_page(env.log, HistoryQuery(tenant="acme", limit=5, after=3))
    assert [e.position for e in page.events] == [4, 5, 6, 7, 8]
    assert page.next_cursor == 8

    stored = [r async for r in env.log.read()]
    since = stored[9].recorded_at
    found = [e.position async for e in history(env.log, HistoryQuery(since=since))]
    assert found == [r.position for r in stored if r.recorded_at >= since]

    at_7 = await client_state_at(env.log, "acme", "w1", 7)
    assert (at_7.pending.ids, at_7.delivered.ids) == (["m2"], ["m1"])
    at_time = await client_state_at(env.log, "acme", "w1", stored[6].recorded_at)
    assert at_time.last_event_position == 7
    assert at_time.token_fingerprint == fingerprint("device-token-w1")


async def test_admin_routes_over_jetstream(env: Env) -> None:
    await append_story(env.log)
    service = RelayService(env.log, enabled_providers=lambda _t: frozenset({"noop"}))
    app = create_app(settings=Settings(admin_token="t0ken"), service=service, event_log=env.log)
    auth = {"Authorization": "Bearer t0ken"}
    async with asgi_client(app) as http:
        assert (await http.get("/admin/events")).status_code == 401
        response = await http.get(
            "/admin/events", params={"notification": "m2", "tenant": "acme"}, headers=auth
        )
        assert response.status_code == 200
        body = response.json()
        assert [e["type"] for e in body["events"]] == [
            "notification.accepted",
            "notification.delivery_failed",
            "notification.delivered",
        ]
        assert body["events"][0]["cause"] == {"request_id": "req-m2", "message_id": "m2"}
        assert body["next_cursor"] is None
        response = await http.get(
            "/admin/clients/w2/state", params={"tenant": "acme", "at": "9"}, headers=auth
        )
        state = response.json()["state"]
        assert state["registered"] is True
        assert state["failed"] == {"count": 1, "ids": ["m3"]}


# -- the commands ------------------------------------------------------------------------------

SETTINGS = Settings(audit_public_key=KEY.public_key.hex)


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaypush")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    return parser


async def test_the_audit_commands(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await append_story(env.log)
    await Chainer(env.log, KEY, every_events=5).catch_up()
    parser = cli_parser()
    capsys.readouterr()  # the chainer's log lines

    async def run(*argv: str) -> tuple[int, str]:
        code = await run_audit(parser.parse_args(["audit", *argv]), env.log, SETTINGS)
        captured = capsys.readouterr()
        errors.append(captured.err)
        return code, captured.out

    errors: list[str] = []

    code, out = await run("history", "--client", "w2", "--json")
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    assert [e["position"] for e in entries] == [3, 8, 9, 13]
    assert "device-token" not in out

    code, out = await run("history", "--type", "client.registered", "--limit", "2")
    assert [line.split()[0] for line in out.splitlines()] == ["2", "3"]
    assert errors[-1] == "more: --after 3\n"

    code, out = await run("history", "--since", T0.isoformat(), "--until", "2100-01-01")
    assert len(out.splitlines()) == await env.log.last_position()

    code, out = await run("state", "--client", "w1", "--tenant", "acme", "--at", "7")
    assert code == 0
    assert "pending: 1: m2" in out
    assert "delivered: 1: m1" in out

    export = tmp_path / "log.jsonl"
    code, _ = await run("export", "--output", str(export))
    assert code == 0
    assert len(export.read_bytes().splitlines()) == await env.log.last_position()

    code, out = await run("verify", "--file", str(export), "--public-key", KEY.public_key.hex)
    assert code == 0
    assert out.startswith("OK")
    offline = parser.parse_args(["audit", "verify", "--file", str(export)])
    assert not needs_event_log(offline)
    assert await run_audit(offline, None, SETTINGS) == 0  # no event log at all
    assert capsys.readouterr().out == out
    online = parser.parse_args(["audit", "history"])
    assert await run_audit(online, None, SETTINGS) == 2
    assert "needs the event log" in capsys.readouterr().err
    code, out = await run("verify", "--json")
    assert code == 0
    assert json.loads(out)["protected_upto"] == 17

    lines = export.read_bytes().splitlines()
    export.write_bytes(b"\n".join(lines[:5] + lines[6:]) + b"\n")  # drop position 6
    code, out = await run("verify", "--file", str(export))
    assert code == 1
    assert out.startswith("BROKEN at position 6: dropped")

    code, out = await run("verify", "--public-key", OTHER_KEY.public_key.hex)
    assert code == 1
    assert "bad_signature" in out

    code, _ = await run("history", "--type", "no.such.type")
    assert code == 2
    assert "unknown event types" in errors[-1]


async def test_history_follow_streams_new_events(env: Env) -> None:
    """``--follow`` prints the history, then what is appended, until it is stopped."""
    await append_story(env.log, STORY[:3])
    stop = asyncio.Event()
    seen: list[str] = []

    async def follow() -> None:
        async for entry in follow_history(
            env.log, HistoryQuery(types=frozenset({"client.registered"})), stop, poll_interval=0.02
        ):
            assert isinstance(entry.data, dict)
            seen.append(entry.data["client_id"])
            if len(seen) == 3:
                stop.set()

    task = asyncio.create_task(follow())
    await append_story(
        env.log, [msgspec.structs.replace(STORY[1], event_id="late", client_id="late")]
    )
    await asyncio.wait_for(task, 10)
    assert seen == ["w1", "w2", "late"]
