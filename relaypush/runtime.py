"""Wiring: the backing services, the event log and the long-running parts of relaypush.

``open_backends`` starts embedded NATS and PostgreSQL when no URL is configured, connects the
event log and migrates the read tables; ``serve`` runs the API, the dispatcher and the projector
in one process, and ``run_api`` / ``run_dispatcher`` / ``run_projector`` run each alone. Signals
set a stop event; each part finishes its in-flight work, then the embedded servers stop in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
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
from relaypush.audit.chainer import Chainer
from relaypush.config import Settings
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.noop import NoopProvider
from relaypush.delivery.outcomes import Provider
from relaypush.delivery.registry import ProviderRegistry
from relaypush.domain.events import ProviderType
from relaypush.embedded import EmbeddedNats, EmbeddedPostgres, die_with_parent
from relaypush.http.app import create_app
from relaypush.metrics import REGISTRY
from relaypush.metrics_server import serve_metrics
from relaypush.privacy import Sealer, open_sealer
from relaypush.service import RelayService
from relaypush.tenancy.store import open_credential_store

__all__ = ["Backends", "open_backends", "run_api", "run_dispatcher", "run_projector", "serve"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Backends:
    event_log: JetStreamEventLog
    database_url: str
    settings: Settings
    nats_url: str
    sealer: Sealer
    """Seals and opens personal fields with the client keys beside the log (relaypush.privacy)."""


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
            yield Backends(
                event_log=event_log,
                database_url=database_url or "",
                settings=settings,
                nats_url=nats_url,
                sealer=await open_sealer(event_log, settings),
            )
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


def _listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """The API's listening socket; with ``reuse_port`` several processes share the port and
    the kernel spreads connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _spawn_api_worker(backends: Backends) -> subprocess.Popen[bytes]:
    """Another API process on the same port and the same NATS; it dies with this one."""
    env = dict(os.environ)
    env["RELAYPUSH_NATS_URL"] = backends.nats_url
    if backends.database_url:
        env["RELAYPUSH_DATABASE_URL"] = backends.database_url
    env["RELAYPUSH_API_WORKERS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "relaypush.cli", "api", "--worker"],
        env=env,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )


def _stop_workers(workers: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in workers:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _api(backends: Backends, stop: asyncio.Event, *, worker: bool = False) -> None:
    """Serve the HTTP API. With ``api_workers`` > 1 this process also starts the other workers;
    all of them share the port (SO_REUSEPORT) and one memory of relay signatures."""
    settings = backends.settings
    shared = worker or settings.api_workers > 1
    guard = (
        await backends.event_log.once("REPLAY", ttl=settings.signature_max_age * 2)
        if shared and settings.relay_public_key
        else None
    )
    service = RelayService(
        backends.event_log, enabled_providers=enabled_providers(settings), sealer=backends.sealer
    )
    async with open_credential_store(settings, backends.database_url) as credentials:
        app = create_app(
            settings=settings,
            service=service,
            replay_guard=guard,
            credentials=credentials,
            event_log=backends.event_log,
        )
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            # X-Forwarded-For is read by the rate limit alone, trusting RELAYPUSH_TRUSTED_PROXIES
            proxy_headers=False,
        )
        server = _Server(config)
        sock = _listen(settings.host, settings.port, reuse_port=shared)
        workers = (
            [] if worker else [_spawn_api_worker(backends) for _ in range(settings.api_workers - 1)]
        )
        try:
            task = asyncio.create_task(server.serve(sockets=[sock]))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopper.cancel()
            await task
        finally:
            sock.close()
            await asyncio.to_thread(_stop_workers, workers)
    stop.set()


async def _dispatcher(backends: Backends, stop: asyncio.Event) -> None:
    settings = backends.settings
    providers = build_providers(settings)
    try:
        async with open_credential_store(settings, backends.database_url) as credentials:
            registry = ProviderRegistry.from_settings(
                settings, backends.event_log, default=providers, credentials=credentials
            )
            dispatcher = Dispatcher(
                backends.event_log,
                registry,
                deadline=settings.delivery_deadline,
                concurrency=settings.dispatcher_concurrency,
                send_timeout=settings.send_timeout,
                sealer=backends.sealer,
            )
            try:
                await dispatcher.run(stop)
            finally:
                await registry.close()  # the providers it built for other tenants
    finally:
        for provider in providers.values():
            await provider.close()


async def _projector(backends: Backends, stop: asyncio.Event) -> None:
    projector = Projector(
        backends.event_log,
        backends.database_url,
        schema=backends.settings.database_schema,
        opener=backends.sealer,
    )
    await projector.run(stop)


async def _chainer(backends: Backends, stop: asyncio.Event) -> None:
    """The audit chainer, when RELAYPUSH_AUDIT_SIGNING_KEY is set (docs/audit.md)."""
    chainer = Chainer.from_settings(backends.event_log, backends.settings)
    if chainer is not None:
        await chainer.run(stop)


async def _run(
    settings: Settings,
    parts: tuple[Callable[[Backends, asyncio.Event], Coroutine[Any, Any, None]], ...],
    *,
    database: bool,
    metrics: bool = False,
) -> None:
    """Run ``parts`` until a signal or the first failure; ``metrics`` serves ``/metrics`` on
    ``RELAYPUSH_METRICS_PORT`` (for parts that have no HTTP API of their own)."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        backends = await stack.enter_async_context(open_backends(settings, database=database))
        if metrics and settings.metrics_port is not None:
            await stack.enter_async_context(
                serve_metrics(REGISTRY, settings.host, settings.metrics_port)
            )
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
    await _run(settings, (_api, _dispatcher, _projector, _chainer), database=True)


async def run_api(settings: Settings, *, worker: bool = False) -> None:
    """The API alone; ``worker`` marks a process started by another API process."""
    part = functools.partial(_api, worker=True) if worker else _api
    await _run(settings, (part,), database=bool(settings.credentials_key))


async def run_dispatcher(settings: Settings) -> None:
    await _run(settings, (_dispatcher,), database=bool(settings.credentials_key), metrics=True)


async def run_projector(settings: Settings) -> None:
    await _run(settings, (_projector, _chainer), database=True, metrics=True)
