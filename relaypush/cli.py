"""The ``relaypush`` command: run the server or its parts, and operate the read tables.

relaypush serve                 API, dispatcher and projector in one process
relaypush api | dispatcher | projector
relaypush projections rebuild   replay the whole log into fresh tables and swap them in
relaypush projections status    each projection's position and lag
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import version
from typing import Any

import psycopg
from psycopg import sql

from projections.rebuild import rebuild
from relaypush import runtime
from relaypush.config import ConfigError, Settings, load_settings
from relaypush.logs import configure_logging

__all__ = ["main"]


async def _rebuild(settings: Settings) -> None:
    async with runtime.open_backends(settings) as backends:
        total = await backends.event_log.last_position()
        started = time.monotonic()
        last_print = 0.0

        def progress(done: int, of: int) -> None:
            nonlocal last_print
            now = time.monotonic()
            if now - last_print < 1.0 and done < of:
                return
            last_print = now
            rate = done / max(now - started, 1e-9)
            print(f"rebuild: {done}/{of} events, {rate:,.0f} events/s", file=sys.stderr)

        applied = await rebuild(
            backends.event_log, backends.database_url, settings.database_schema, progress=progress
        )
        elapsed = time.monotonic() - started
        print(
            f"rebuilt {settings.database_schema} from {applied} events"
            f" (log at {total}) in {elapsed:.1f}s"
        )


async def _status(settings: Settings) -> None:
    async with runtime.open_backends(settings) as backends:
        head = await backends.event_log.last_position()
        async with await psycopg.AsyncConnection.connect(backends.database_url) as conn:
            query = sql.SQL(
                "SELECT name, position, updated_at FROM {}.projection_checkpoints ORDER BY name"
            ).format(sql.Identifier(settings.database_schema))
            cur = await conn.execute(query)
            rows = await cur.fetchall()
        print(f"log head: {head}")
        for name, position, updated_at in rows:
            print(f"{name}: position {position}, lag {head - position}, updated {updated_at}")


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (it is, with uvicorn[standard] on Linux)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaypush", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"relaypush {version('relaypush')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="API, dispatcher and projector in one process")
    api = sub.add_parser("api", help="the HTTP API alone")
    api.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("dispatcher", help="the delivery dispatcher alone")
    sub.add_parser("projector", help="the read-table projector alone")
    proj = sub.add_parser("projections", help="operate the read tables")
    proj_sub = proj.add_subparsers(dest="action", required=True)
    proj_sub.add_parser("rebuild", help="replay the whole log into fresh tables, then swap them in")
    proj_sub.add_parser("status", help="each projection's position and lag")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relaypush: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    commands: dict[str, Callable[[Settings], Coroutine[Any, Any, None]]] = {
        "serve": runtime.serve,
        "api": runtime.run_api,
        "dispatcher": runtime.run_dispatcher,
        "projector": runtime.run_projector,
        "rebuild": _rebuild,
        "status": _status,
    }
    if args.command == "api":
        commands["api"] = functools.partial(runtime.run_api, worker=args.worker)
    name = args.action if args.command == "projections" else args.command
    try:
        _run(commands[name](settings))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
