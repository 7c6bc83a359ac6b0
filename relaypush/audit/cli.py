"""The ``relaypush audit`` commands.

relaypush audit history   events of a client, a notification, a tenant or the log
relaypush audit state     a client's state at a position or a time
relaypush audit export    the log as JSON Lines
relaypush audit import    an export into an empty log
relaypush audit verify    the hash chain and checkpoint signatures, live or of an export
relaypush audit erase     erase a client: its token and notification content become unreadable

:func:`add_audit_parser` adds them to the ``relaypush`` parser; :func:`run_audit` runs the one
parsed, on an open event log, and returns the exit status: 0 done (or verified), 1 the log is
broken or the import was refused, 2 a bad argument.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import IO, Any

import msgspec

from eventstore import EventLog, JetStreamEventLog
from relaypush.audit.errors import AuditError, ImportRefused
from relaypush.audit.export import export_log, import_export, read_export
from relaypush.audit.history import (
    DEFAULT_PAGE,
    HistoryEntry,
    HistoryQuery,
    follow_history,
    history,
    history_page,
)
from relaypush.audit.keys import PublicKey, SigningKey, public_key_from_hex
from relaypush.audit.state import ClientSnapshot, client_state_at, parse_at, parse_time
from relaypush.audit.verify import VerifyReport, verify
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.ids import validate_id
from relaypush.privacy import Sealer, open_sealer
from relaypush.service import RelayService

__all__ = ["add_audit_parser", "needs_event_log", "run_audit"]

_json = msgspec.json.Encoder()


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` and its commands to ``subparsers`` (from ``add_subparsers``); the parsed
    namespace has ``command == "audit"`` and ``audit_command`` naming the command."""
    audit: argparse.ArgumentParser = subparsers.add_parser(
        "audit", help="history, time travel, exports and verification of the event log"
    )
    commands = audit.add_subparsers(dest="audit_command", required=True)

    hist = commands.add_parser("history", help="list events, oldest first")
    hist.add_argument("--client", help="events of this client (its notifications, its inbox)")
    hist.add_argument("--notification", help="events of this notification (relay message id)")
    hist.add_argument("--tenant", help="only this tenant; alone: the tenant's whole history")
    hist.add_argument("--since", help="recorded at or after this ISO 8601 time (UTC if no zone)")
    hist.add_argument("--until", help="recorded at or before this ISO 8601 time")
    hist.add_argument("--type", nargs="+", action="extend", default=[], metavar="TAG")
    hist.add_argument("--after", type=int, default=0, metavar="CURSOR", help="after position")
    hist.add_argument("--limit", type=int, help="at most this many, then the next cursor")
    hist.add_argument("--follow", action="store_true", help="then stream new events (Ctrl-C)")
    hist.add_argument("--json", action="store_true", help="one JSON object a line")

    state = commands.add_parser("state", help="a client's state at a position or a time")
    state.add_argument("--client", required=True)
    state.add_argument("--tenant", default=DEFAULT_TENANT)
    state.add_argument("--at", help="a position or an ISO 8601 time; default: now")
    state.add_argument("--json", action="store_true")

    export = commands.add_parser("export", help="write the whole log as JSON Lines")
    export.add_argument("--output", type=Path, help="file to write (default: standard output)")

    imp = commands.add_parser("import", help="load an export into an empty event log")
    imp.add_argument("file", type=Path)

    check = commands.add_parser("verify", help="check the hash chain and checkpoint signatures")
    check.add_argument("--file", type=Path, help="an export to verify offline (default: the log)")
    check.add_argument(
        "--public-key",
        action="append",
        default=[],
        metavar="HEX",
        help="Ed25519 public key (64 hex digits); repeat for keys used before a rotation",
    )
    check.add_argument("--json", action="store_true")

    erase = commands.add_parser(
        "erase", help="erase a client: unregister it, destroy its key, record client.erased"
    )
    erase.add_argument("--client", required=True)
    erase.add_argument("--tenant", default=DEFAULT_TENANT)
    erase.add_argument("--json", action="store_true")
    return audit


def needs_event_log(args: argparse.Namespace) -> bool:
    """Whether the parsed command reads or writes the event log: ``audit verify --file``
    does not, so an auditor runs it with nothing but the export and the public key."""
    return not (args.audit_command == "verify" and args.file is not None)


async def run_audit(
    args: argparse.Namespace,
    event_log: EventLog | None,
    settings: Settings,
    *,
    sealer: Sealer | None = None,
) -> int:
    """Run the parsed ``audit`` command against ``event_log`` (None will do when
    :func:`needs_event_log` says so); returns the exit status. ``sealer`` opens personal fields
    for ``history`` and ``state`` (without it they show as ``sealed``) and destroys keys for
    ``erase`` (without it, ``erase`` opens the key store of a JetStream log itself)."""
    try:
        if event_log is None:
            if needs_event_log(args):
                raise AuditError(f"audit {args.audit_command} needs the event log")
            return await _verify(args, None, settings)
        match args.audit_command:
            case "history":
                return await _history(args, event_log, sealer)
            case "state":
                return await _state(args, event_log, sealer)
            case "erase":
                return await _erase(args, event_log, settings, sealer)
            case "export":
                return await _export(args, event_log)
            case "import":
                return await _import(args, event_log)
            case "verify":
                return await _verify(args, event_log, settings)
            case other:
                raise AuditError(f"unknown audit command {other!r}")
    except ImportRefused as exc:
        print(f"relaypush audit: import refused: {exc}", file=sys.stderr)
        return 1
    except AuditError as exc:
        print(f"relaypush audit: {exc}", file=sys.stderr)
        return 2


def _query(args: argparse.Namespace) -> HistoryQuery:
    return HistoryQuery(
        client=args.client,
        notification=args.notification,
        tenant=args.tenant,
        since=parse_time(args.since, field="since") if args.since else None,
        until=parse_time(args.until, field="until") if args.until else None,
        types=frozenset(args.type),
        after=args.after,
        limit=args.limit if args.limit is not None else DEFAULT_PAGE,
    )


def _entry_line(entry: HistoryEntry, as_json: bool) -> str:
    if as_json:
        return _json.encode(entry).decode()
    cause = " ".join(f"{k}={v}" for k, v in entry.cause.items())
    data = _json.encode(entry.data).decode() if entry.data is not None else entry.error
    where = ".".join(entry.subject)
    return (
        f"{entry.position:>9}  {entry.recorded_at.isoformat()}  {entry.type:<29} {where}"
        f"{'  cause: ' + cause if cause else ''}  {data}"
    )


async def _history(args: argparse.Namespace, event_log: EventLog, sealer: Sealer | None) -> int:
    query = _query(args)
    out = sys.stdout
    if args.follow:
        stop = asyncio.Event()
        with _stop_on_signals(stop):
            async with aclosing(follow_history(event_log, query, stop, sealer=sealer)) as entries:
                async for entry in entries:
                    print(_entry_line(entry, args.json), file=out, flush=True)
        return 0
    if args.limit is not None:
        page = await history_page(event_log, query, sealer=sealer)
        for entry in page.events:
            print(_entry_line(entry, args.json), file=out)
        if page.next_cursor is not None:
            print(f"more: --after {page.next_cursor}", file=sys.stderr)
        return 0
    async with aclosing(history(event_log, query, sealer=sealer)) as found:
        async for entry in found:
            print(_entry_line(entry, args.json), file=out)
    return 0


@contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: Ctrl-C interrupts as usual
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _describe_state(snapshot: ClientSnapshot) -> str:
    if snapshot.at_position is not None:
        at = f"at position {snapshot.at_position}"
    elif snapshot.at_time is not None:
        at = f"at {snapshot.at_time.isoformat()}"
    else:
        at = "now"
    lines = [f"client {snapshot.client_id} of tenant {snapshot.tenant_id}, {at}:"]
    if snapshot.last_event_position == 0:
        lines.append("  no event yet: never registered")
    elif snapshot.registered:
        lines.append(
            f"  registered ({snapshot.provider}, token {snapshot.token_fingerprint}, "
            f"always_raw {str(snapshot.always_raw).lower()}) since "
            f"{snapshot.registered_at.isoformat() if snapshot.registered_at else '?'}"
        )
    else:
        when = snapshot.unregistered_at.isoformat() if snapshot.unregistered_at else "?"
        lines.append(f"  not registered (unregistered {when}: {snapshot.unregister_reason})")
    if snapshot.erased_at is not None:
        lines.append(
            f"  erased {snapshot.erased_at.isoformat()}: its token and notification content "
            "before then are unreadable"
        )
    for name in ("pending", "delivered", "failed", "dropped"):
        ids = getattr(snapshot, name)
        shown = ", ".join(ids.ids[:20]) + (", …" if ids.count > 20 else "")
        lines.append(f"  {name}: {ids.count}{': ' + shown if ids.count else ''}")
    lines.append(f"  last event at position {snapshot.last_event_position}")
    return "\n".join(lines)


async def _state(args: argparse.Namespace, event_log: EventLog, sealer: Sealer | None) -> int:
    at = parse_at(args.at) if args.at else None
    snapshot = await client_state_at(event_log, args.tenant, args.client, at, sealer=sealer)
    if args.json:
        print(_json.encode(snapshot).decode())
    else:
        print(_describe_state(snapshot))
    return 0


async def _erase(
    args: argparse.Namespace, event_log: EventLog, settings: Settings, sealer: Sealer | None
) -> int:
    try:
        client_id = validate_id(args.client, field="--client", location="query", kind="client")
        tenant_id = validate_id(args.tenant, field="--tenant", location="query", kind="tenant")
    except InvalidRequest as exc:
        raise AuditError("; ".join(f"{f.field}: {f.description}" for f in exc.fields)) from exc
    if sealer is None:
        if not isinstance(event_log, JetStreamEventLog):
            raise AuditError("audit erase needs the key store beside the event log")
        sealer = await open_sealer(event_log, settings)
    service = RelayService(event_log, enabled_providers=lambda _: frozenset(), sealer=sealer)
    done = await service.erase(tenant_id, client_id, request_id="cli-" + uuid.uuid4().hex)
    if args.json:
        print(
            _json.encode(
                {
                    "tenant_id": tenant_id,
                    "client_id": client_id,
                    "position": done.position,
                    "unregistered": done.unregistered,
                    "key_ids": list(done.key_ids),
                }
            ).decode()
        )
        return 0
    what = "unregistered, " if done.unregistered else ""
    keys = ", ".join(done.key_ids) if done.key_ids else "none (it had no key)"
    print(
        f"erased client {client_id} of tenant {tenant_id}: {what}key destroyed: {keys}; "
        f"client.erased at position {done.position}"
    )
    return 0


async def _export(args: argparse.Namespace, event_log: EventLog) -> int:
    if args.output is None:
        count = await export_log(event_log, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        with args.output.open("wb") as out:
            count = await export_log(event_log, out)
    print(f"exported {count} events", file=sys.stderr)
    return 0


async def _import(args: argparse.Namespace, event_log: EventLog) -> int:
    try:
        with args.file.open("rb") as lines:
            count = await import_export(event_log, read_export(lines))
    except OSError as exc:
        raise AuditError(f"cannot read {args.file}: {exc}") from exc
    print(f"imported {count} events", file=sys.stderr)
    return 0


def verification_keys(given: list[str], settings: Settings) -> list[PublicKey]:
    """The keys to verify with: those given, else the configured public key, else the one of
    the configured signing key."""
    if given:
        return [public_key_from_hex(k) for k in given]
    if settings.audit_public_key:
        return [public_key_from_hex(settings.audit_public_key)]
    if settings.audit_signing_key:
        return [SigningKey.from_hex(settings.audit_signing_key).public_key]
    raise AuditError(
        "no public key: pass --public-key or set RELAYPUSH_AUDIT_PUBLIC_KEY "
        "(or RELAYPUSH_AUDIT_SIGNING_KEY)"
    )


async def _verify(args: argparse.Namespace, event_log: EventLog | None, settings: Settings) -> int:
    keys = verification_keys(args.public_key, settings)
    report: VerifyReport
    if args.file is not None:
        try:
            with args.file.open("rb") as lines:
                report = await verify(read_export(lines), keys)
        except OSError as exc:
            raise AuditError(f"cannot read {args.file}: {exc}") from exc
    else:
        assert event_log is not None
        report = await verify(event_log.read(), keys)
    _print_report(report, args.json, sys.stdout)
    return 0 if report.ok else 1


def _print_report(report: VerifyReport, as_json: bool, out: IO[str]) -> None:
    if not as_json:
        print(report.describe(), file=out)
        return
    broken = report.broken
    print(
        _json.encode(
            {
                "ok": report.ok,
                "events": report.events,
                "last_position": report.last_position,
                "head": report.head,
                "checkpoints": report.checkpoints,
                "protected_upto": report.protected_upto,
                "unprotected": report.unprotected,
                "break": None
                if broken is None
                else {
                    "position": broken.position,
                    "kind": str(broken.kind),
                    "detail": broken.detail,
                },
            }
        ).decode(),
        file=out,
    )
