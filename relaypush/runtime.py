"""Wiring: the backing services, the event log and the long-running parts of relaypush.

``open_backends`` starts embedded NATS and PostgreSQL when no URL is configured, connects the
event log and migrates the read tables; ``serve`` runs the API, the dispatcher and the projector
in one process, and ``run_api`` / ``run_dispatcher`` / ``run_projector`` run each alone. Signals
set a stop event; each part finishes its in-flight work, then the embedded servers stop in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog
import uvicorn

from eventstore.jetstream import JetStreamEventLog
from projections.runner import Projector
from projections.schema import migrate
from relaypush.config import Settings
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.noop import NoopProvider
from relaypush.delivery.outcomes import Provider
from relaypush.domain.events import ProviderType
from relaypush.embedded import EmbeddedNats, EmbeddedPostgres
from relaypush.http.app import create_app
from relaypush.service import RelayService

__all__ = ["Backends", "open_backends", "run_api", "run_dispatcher", "run_projector", "serve"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Backends:
    event_log: JetStreamEventLog
    database_url: str
    settings: Settings


RUNTIME_FILE = "runtime.json"


def _running_embedded(data_dir: Path) -> dict[str, str] | None:
    """The URLs of embedded servers a live ``relaypush`` process already runs on ``data_dir``."""
    try:
        info = json.loads((data_dir / RUNTIME_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {k: str(v) for k, v in info.items() if k.endswith("_url")}


@contextlib.contextmanager
def _embedded(settings: Settings, *, database: bool) -> Iterator[tuple[str, str | None]]:
    """Start the embedded servers the settings leave without a URL; yield (nats, database) URLs.

    The database is started only when ``database`` is true (the API and the dispatcher need none).
    When another relaypush process already runs embedded servers on the same data dir (its
    ``runtime.json`` names a live pid), their URLs are used instead of starting a second copy.
    """
    data_dir = Path(settings.data_dir)
    running = _running_embedded(data_dir) or {}
    with contextlib.ExitStack() as stack:
        started: dict[str, str] = {}
        nats_url = settings.nats_url or running.get("nats_url")
        if nats_url is None:
            nats = EmbeddedNats(data_dir / "nats")
            nats.start()
            stack.callback(nats.stop)
            nats_url = started["nats_url"] = nats.url
            log.info("embedded_nats_started", url=nats_url)
        database_url = (settings.database_url or running.get("database_url")) if database else None
        if database and database_url is None:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            postgres.start()
            stack.callback(postgres.stop)
            database_url = started["database_url"] = postgres.url
            log.info("embedded_postgres_started", url=database_url)
        if started:
            runtime_file = data_dir / RUNTIME_FILE
            runtime_file.write_text(json.dumps({"pid": os.getpid(), **started}))
            stack.callback(runtime_file.unlink, missing_ok=True)
        yield nats_url, database_url


@contextlib.asynccontextmanager
async def open_backends(settings: Settings, *, database: bool = True) -> AsyncIterator[Backends]:
    """Connect (starting embedded servers where needed) and migrate; close everything on exit."""
    with _embedded(settings, database=database) as (nats_url, database_url):
        event_log = await JetStreamEventLog.connect(
            nats_url,
            stream=settings.stream_name,
            prefix=settings.subject_prefix,
            duplicate_window=settings.duplicate_window,
            replicas=settings.stream_replicas,
        )
        try:
            if database_url is not None:
                async with await psycopg.AsyncConnection.connect(database_url) as conn:
                    await migrate(conn, settings.database_schema)
            yield Backends(event_log=event_log, database_url=database_url or "", settings=settings)
        finally:
            await event_log.close()


def enabled_providers(settings: Settings) -> Callable[[str], frozenset[ProviderType]]:
    """Which client types each tenant may register (single tenant: from the settings)."""
    enabled: set[ProviderType] = {"noop"}
    if settings.apns_topic and (settings.apns_key_file or settings.apns_cert_file):
        enabled |= {"apns", "apns-sandbox"}
    if settings.fcm_credentials_file:
        enabled.add("fcm")
    frozen = frozenset(enabled)
    return lambda _tenant_id: frozen


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The default tenant's providers: noop always, APNs and FCM when configured."""
    providers: dict[str, Provider] = {"noop": NoopProvider()}
    timeout = settings.send_timeout
    apns = ApnsProvider.from_settings(settings, sandbox=False, timeout=timeout)
    apns_sandbox = ApnsProvider.from_settings(settings, sandbox=True, timeout=timeout)
    fcm = FcmProvider.from_settings(settings, timeout=timeout)
    for name, provider in (("apns", apns), ("apns-sandbox", apns_sandbox), ("fcm", fcm)):
        if provider is not None:
            providers[name] = provider
    return providers


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: relaypush owns the signals and the order of exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _api(backends: Backends, stop: asyncio.Event) -> None:
    settings = backends.settings
    service = RelayService(backends.event_log, enabled_providers=enabled_providers(settings))
    app = create_app(settings=settings, service=service)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task
    stop.set()


async def _dispatcher(backends: Backends, stop: asyncio.Event) -> None:
    settings = backends.settings
    providers = build_providers(settings)
    dispatcher = Dispatcher(
        backends.event_log,
        providers,
        deadline=settings.delivery_deadline,
        concurrency=settings.dispatcher_concurrency,
        send_timeout=settings.send_timeout,
    )
    try:
        await dispatcher.run(stop)
    finally:
        for provider in providers.values():
            await provider.close()


async def _projector(backends: Backends, stop: asyncio.Event) -> None:
    projector = Projector(
        backends.event_log, backends.database_url, schema=backends.settings.database_schema
    )
    await projector.run(stop)


async def _run(
    settings: Settings,
    parts: tuple[Callable[[Backends, asyncio.Event], Coroutine[Any, Any, None]], ...],
    *,
    database: bool,
) -> None:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with open_backends(settings, database=database) as backends:
        tasks = [asyncio.create_task(part(backends, stop)) for part in parts]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    log.info("stopped")


async def serve(settings: Settings) -> None:
    """API, dispatcher and projector in one process."""
    await _run(settings, (_api, _dispatcher, _projector), database=True)


async def run_api(settings: Settings) -> None:
    await _run(settings, (_api,), database=False)


async def run_dispatcher(settings: Settings) -> None:
    await _run(settings, (_dispatcher,), database=False)


async def run_projector(settings: Settings) -> None:
    await _run(settings, (_projector,), database=True)
