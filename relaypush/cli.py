"""The ``relaypush`` command: run the server or its parts, and operate the read tables.

relaypush serve                 everything on one machine, one command
relaypush api | dispatcher | projector
relaypush projections rebuild   replay the whole log into fresh tables and swap them in
relaypush projections status    each projection's position and lag
relaypush tenants unsuspend ID  lift a tenant's suspension
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC
from importlib.metadata import version
from typing import Any

from projections.errors import ProjectionError
from projections.rebuild import rebuild_and_swap
from projections.status import LockHolder, schema_status
from relaypush import runtime
from relaypush.audit.cli import add_audit_parser, needs_event_log, run_audit
from relaypush.config import ConfigError, Settings, load_settings
from relaypush.domain.tenants import TenantNotFound
from relaypush.localkeys import with_local_keys
from relaypush.logs import configure_logging
from relaypush.progress import Progress
from relaypush.tenancy.checks import CredentialChecker
from relaypush.tenancy.service import TenantService
from relaypush.tenancy.store import rotate_key

__all__ = ["main"]


async def _rebuild(settings: Settings) -> None:
    """Rebuild the read tables beside the live ones while the service runs, then swap them in
    (``projections.rebuild``); progress on standard error, a summary on standard output."""
    schema = settings.database_schema
    async with runtime.open_backends(settings) as backends:
        head = await backends.event_log.last_position()
        print(f"rebuilding {schema} from {head:,} events beside the live tables", file=sys.stderr)
        progress = Progress("rebuild", sys.stderr)
        try:
            result = await rebuild_and_swap(
                runtime.with_archive(backends.event_log, settings),
                backends.database_url,
                schema,
                progress=progress.update,
                opener=backends.sealer,
            )
        except ProjectionError as exc:
            print(f"relaypush: rebuilding {schema} failed: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc
        finally:
            progress.close()
    carried = f"; kept {', '.join(result.carried)}" if result.carried else ""
    print(
        f"rebuilt {schema}: {progress.summary()}; swapped in at position {result.position}"
        f" (live projector at {result.live_position}, held {result.held * 1000:.0f} ms){carried}"
    )


async def _status(settings: Settings) -> None:
    """The log's head, each projection's position, lag and last move, and who holds the
    schema's projector and rebuild locks."""

    def ago(seconds: float) -> str:
        seconds = max(0.0, seconds)
        if seconds < 120:
            return f"{seconds:.0f}s ago"
        if seconds < 7200:
            return f"{seconds / 60:.0f}m ago"
        return f"{seconds / 3600:.1f}h ago"

    def session(holder: LockHolder) -> str:
        where = f", from {holder.client}" if holder.client else ""
        name = f", {holder.application}" if holder.application else ""
        return f"PostgreSQL pid {holder.pid}{where}{name}"

    schema = settings.database_schema
    async with runtime.open_backends(settings) as backends:
        head = await backends.event_log.last_position()
        status = await schema_status(backends.database_url, schema)
    print(f"log head: {head} (stream {settings.stream_name})")
    if not status.checkpoints:
        print(f"{schema}: no read tables")
    for checkpoint in status.checkpoints:
        updated = checkpoint.updated_at.astimezone(UTC).isoformat(timespec="seconds")
        since = ago((status.checked_at - checkpoint.updated_at).total_seconds())
        print(
            f"{schema}.{checkpoint.name}: position {checkpoint.position},"
            f" lag {head - checkpoint.position}, updated {updated} ({since})"
        )
    if status.skipped.count:
        print(
            f"{schema}: {status.skipped.count} event(s) could not be applied and were passed"
            " over (see docs/operations.md, 'An event the read tables cannot take'):"
        )
        for position, kind, error in status.skipped.last:
            print(f"  position {position} ({kind}): {error}")
    if status.projector is None:
        print(f"projector: not running (nobody holds the lock of {schema})")
    else:
        print(f"projector: running (holds the lock of {schema}: {session(status.projector)})")
    if status.rebuild is not None:
        position = status.rebuild_position or 0
        print(
            f"rebuild: running ({session(status.rebuild)}), {schema}_rebuild at position"
            f" {position}, lag {head - position}"
        )


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (it is, with uvicorn[standard] on Linux)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def _rotate_key(settings: Settings) -> None:
    async with runtime.open_backends(settings) as backends:
        report = await rotate_key(settings, backends.database_url)
    print(f"re-sealed {report.resealed}; {report.already_current} already under the current key")
    for tenant_id, kind, key_id in report.unopenable:
        print(f"cannot open {kind} of {tenant_id}: key {key_id} is not configured", file=sys.stderr)
    if report.unopenable:
        raise SystemExit(1)


async def _unsuspend(settings: Settings, tenant_id: str) -> None:
    """Lift a tenant's suspension: its held notifications go out."""
    async with runtime.open_backends(settings, database=False) as backends:
        service = TenantService(
            backends.event_log,
            tenants=backends.tenants,
            credentials=None,
            checker=CredentialChecker(),
            base_url=settings.base_url,
        )
        try:
            lifted = await service.unsuspend(tenant_id, request_id="cli-" + uuid.uuid4().hex)
        except TenantNotFound:
            print(f"relaypush: no tenant {tenant_id!r}", file=sys.stderr)
            raise SystemExit(1) from None
    print(f"{tenant_id}: {'un-suspended' if lifted else 'was not suspended'}")


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    async def audit() -> int:
        if not needs_event_log(args):  # `audit verify --file`: offline, connects to nothing
            return await run_audit(args, None, settings)
        async with runtime.open_backends(settings, database=False) as backends:
            history = runtime.with_archive(backends.event_log, settings)
            return await run_audit(args, history, settings, sealer=backends.sealer)

    try:
        return asyncio.run(audit())
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaypush", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relaypush {version('relaypush')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="everything on one machine: API, dispatcher, projector")
    api = sub.add_parser("api", help="the HTTP API alone")
    api.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("dispatcher", help="the delivery dispatcher alone")
    sub.add_parser("projector", help="the read-table projector alone")
    proj = sub.add_parser("projections", help="operate the read tables")
    proj_sub = proj.add_subparsers(dest="action", required=True)
    proj_sub.add_parser(
        "rebuild",
        help="replay the log into fresh tables beside the live ones while the service runs,"
        " then swap them in",
    )
    proj_sub.add_parser(
        "status", help="the log's head, each projection's position and lag, the projector's lock"
    )
    tenants = sub.add_parser("tenants", help="operate tenants and their credentials")
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    tenant_actions.add_parser(
        "rotate-key", help="re-seal every tenant credential under RELAYPUSH_CREDENTIALS_KEY"
    )
    unsuspend = tenant_actions.add_parser(
        "unsuspend", help="lift a tenant's suspension (the default tenant is 0000-0000-0000-0000)"
    )
    unsuspend.add_argument("tenant_id")
    add_audit_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relaypush: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        settings = with_local_keys(settings, create=args.command == "serve")
    except (OSError, ConfigError) as exc:
        print(f"relaypush: cannot use the keys in {settings.data_dir}: {exc}", file=sys.stderr)
        return 2
    if args.command == "audit":
        return _audit(args, settings)
    commands: dict[str, Callable[[Settings], Coroutine[Any, Any, None]]] = {
        "serve": runtime.serve,
        "api": runtime.run_api,
        "dispatcher": runtime.run_dispatcher,
        "projector": runtime.run_projector,
        "rebuild": _rebuild,
        "status": _status,
        "rotate-key": _rotate_key,
    }
    if args.command == "api":
        commands["api"] = functools.partial(runtime.run_api, worker=args.worker)
    if args.command == "tenants" and args.action == "unsuspend":
        commands["unsuspend"] = functools.partial(_unsuspend, tenant_id=args.tenant_id)
    name = args.action if args.command in ("projections", "tenants") else args.command
    try:
        _run(commands[name](settings))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
