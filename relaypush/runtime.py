"""Wiring: the backing services, the event log and the long-running parts of relaypush.

``open_backends`` starts embedded NATS and PostgreSQL when no URL is configured, connects the
event log and migrates the read tables; ``serve`` runs everything on one machine (the API workers
and the dispatcher in processes of their own, :mod:`relaypush.supervisor`), and ``run_api`` /
``run_dispatcher`` / ``run_projector`` run each part alone. Signals
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

from eventstore import EventLog, EventStoreError
from eventstore.jetstream import JetStreamEventLog
from projections.dedup import open_dedup_index
from projections.runner import Projector
from projections.schema import migrate
from relaypush.aggregates import TenantStatuses
from relaypush.audit.archive import Archive, ArchivedLog, Archiver
from relaypush.audit.chainer import Chainer
from relaypush.config import Settings
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.noop import NoopProvider
from relaypush.delivery.outcomes import Provider
from relaypush.delivery.registry import ProviderRegistry
from relaypush.delivery.webpush import WebPushProvider
from relaypush.domain.events import ProviderType
from relaypush.embedded import EmbeddedNats, EmbeddedPostgres, die_with_parent
from relaypush.http.app import create_app
from relaypush.metrics import (
    MULTIPROCESS_DIR_VARIABLE,
    REGISTRY,
    process_ended,
    shared_between_processes,
)
from relaypush.metrics_server import serve_metrics
from relaypush.privacy import Sealer, open_sealer
from relaypush.retention import Keeper
from relaypush.service import RelayService
from relaypush.supervisor import Child, Supervisor
from relaypush.tenancy.checks import CredentialChecker
from relaypush.tenancy.default import default_fingerprints, unsuspend_default_on_new_settings
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
    tenants: TenantStatuses
    """The process's one cache of tenants' states, shared by every part that reads them."""


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
async def open_backends(
    settings: Settings, *, database: bool = True, migrate_tables: bool = True
) -> AsyncIterator[Backends]:
    """Connect (starting embedded servers where needed) and, with ``migrate_tables``, migrate
    the read tables (which needs PostgreSQL up); close everything on exit."""
    with _embedded(settings, database=database) as (nats_url, database_url):
        event_log = await JetStreamEventLog.connect(
            nats_url,
            stream=settings.stream_name,
            prefix=settings.subject_prefix,
            duplicate_window=settings.duplicate_window,
            replicas=settings.stream_replicas,
            max_age=settings.log_max_age,
            max_bytes=settings.log_max_bytes,
        )
        try:
            if database_url is not None and migrate_tables:
                async with await psycopg.AsyncConnection.connect(database_url) as conn:
                    await migrate(conn, settings.database_schema)
            yield Backends(
                event_log=event_log,
                database_url=database_url or "",
                settings=settings,
                nats_url=nats_url,
                sealer=await open_sealer(event_log, settings),
                tenants=TenantStatuses(event_log),
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
    if settings.vapid_private_key_file:
        enabled.add("webpush")
    frozen = frozenset(enabled)
    return lambda _tenant_id: frozen


def build_providers(settings: Settings) -> dict[str, Provider]:
    """The default tenant's providers: noop always, APNs, FCM and Web Push when configured."""
    providers: dict[str, Provider] = {"noop": NoopProvider()}
    timeout = settings.send_timeout
    apns = ApnsProvider.from_settings(settings, sandbox=False, timeout=timeout)
    apns_sandbox = ApnsProvider.from_settings(settings, sandbox=True, timeout=timeout)
    fcm = FcmProvider.from_settings(settings, timeout=timeout)
    webpush = WebPushProvider.from_settings(settings, timeout=timeout)
    for name, provider in (
        ("apns", apns),
        ("apns-sandbox", apns_sandbox),
        ("fcm", fcm),
        ("webpush", webpush),
    ):
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
        process_ended(proc.pid)


def _warn_if_open(settings: Settings) -> None:
    """One loud line for each way the API is open to anyone who can reach it."""
    if not settings.relay_public_key:
        log.warning(
            "relay_signatures_not_checked",
            risk="anyone who can reach the API can push to any registered client",
            fix="set RELAYPUSH_RELAY_PUBLIC_KEY to the relay's Ed25519 public key (hex)",
        )
    if not settings.require_client_auth:
        log.warning(
            "client_auth_not_required",
            risk="anyone who can reach the API can register or unregister any client id",
            fix="set RELAYPUSH_REQUIRE_CLIENT_AUTH=true (wallet SDKs send a did:key JWT)",
        )


async def _api(backends: Backends, stop: asyncio.Event, *, worker: bool = False) -> None:
    """Serve the HTTP API. With ``api_workers`` > 1 this process also starts the other workers;
    all of them share the port (SO_REUSEPORT) and one memory of relay signatures."""
    settings = backends.settings
    if not worker:
        _warn_if_open(settings)
    workers_wanted = settings.api_workers or 1
    shared = worker or workers_wanted > 1
    guard = (
        await backends.event_log.once("REPLAY", ttl=settings.signature_max_age * 2)
        if shared and settings.relay_public_key
        else None
    )
    async with contextlib.AsyncExitStack() as resources:
        index = (
            await resources.enter_async_context(
                open_dedup_index(backends.database_url, settings.database_schema)
            )
            if backends.database_url
            else None
        )
        service = RelayService(
            backends.event_log,
            enabled_providers=enabled_providers(settings),
            sealer=backends.sealer,
            dedup_index=index,
            duplicate_window=settings.duplicate_window,
            tenants=backends.tenants,
        )
        credentials = await resources.enter_async_context(
            open_credential_store(settings, backends.database_url)
        )
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
        workers = [] if worker else [_spawn_api_worker(backends) for _ in range(workers_wanted - 1)]
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
                settings,
                backends.event_log,
                default=providers,
                credentials=credentials,
                tenants=backends.tenants,
            )
            dispatcher = Dispatcher(
                backends.event_log,
                registry,
                deadline=settings.delivery_deadline,
                concurrency=settings.dispatcher_concurrency,
                send_timeout=settings.send_timeout,
                sealer=backends.sealer,
                tenants=backends.tenants,
                default_fingerprints=default_fingerprints(settings),
            )
            await _lift_default_suspension(backends)
            try:
                await dispatcher.run(stop)
            finally:
                await registry.close()  # the providers it built for other tenants
    finally:
        for provider in providers.values():
            await provider.close()


async def _lift_default_suspension(backends: Backends) -> None:
    """A dispatcher starting with changed default-tenant settings lifts the suspension the old
    ones caused, once the new ones pass their check (relaypush.tenancy.default)."""
    settings = backends.settings
    checker = CredentialChecker(
        fcm_token_hosts=settings.fcm_token_hosts,
        fcm_verify=settings.fcm_ca_file,
        timeout=settings.send_timeout,
    )
    try:
        await unsuspend_default_on_new_settings(
            backends.event_log, backends.tenants, settings, checker
        )
    except EventStoreError as exc:  # the log is away: the next start looks again
        log.warning("default_tenant_check_skipped", error=str(exc))


def with_archive(event_log: EventLog, settings: Settings) -> EventLog:
    """The log as readers of its whole history see it: the archive first, when there is one."""
    directory = settings.archive_directory
    return event_log if directory is None else ArchivedLog(event_log, Archive(directory))


async def _projector(backends: Backends, stop: asyncio.Event) -> None:
    settings = backends.settings
    skipped = REGISTRY.counter(
        "relaypush_projection_skipped_events_total",
        "Events the read tables could not take and passed over (projection_skips)",
        ("schema",),
    )
    projector = Projector(
        backends.event_log,
        backends.database_url,
        schema=settings.database_schema,
        opener=backends.sealer,
        dedup_retention=settings.dedup_retention,
        history=with_archive(backends.event_log, settings) if settings.log_limited else None,
        on_skip=lambda _: skipped.inc(schema=settings.database_schema),
    )
    await projector.run(stop)


async def _chainer(backends: Backends, stop: asyncio.Event) -> None:
    """The audit chainer, when RELAYPUSH_AUDIT_SIGNING_KEY is set (docs/audit.md)."""
    chainer = Chainer.from_settings(
        with_archive(backends.event_log, backends.settings), backends.settings
    )
    if chainer is not None:
        await chainer.run(stop)


async def _retention(backends: Backends, stop: asyncio.Event) -> None:
    """With stream limits: the archiver, and the keeper that carries state forward."""
    settings = backends.settings
    directory = settings.archive_directory
    if not settings.log_limited or directory is None:
        return
    archiver = Archiver(
        backends.event_log,
        Archive(directory),
        segment_events=settings.archive_segment_events,
        segment_seconds=settings.archive_segment_seconds,
    )
    keeper = Keeper(
        backends.event_log,
        backends.database_url,
        schema=settings.database_schema,
        max_age=settings.log_max_age,
        max_bytes=settings.log_max_bytes,
    )
    await asyncio.gather(archiver.run(stop), keeper.run(stop))


async def _run(
    settings: Settings,
    parts: tuple[Callable[[Backends, asyncio.Event], Coroutine[Any, Any, None]], ...],
    *,
    database: bool,
    migrate_tables: bool = True,
    metrics: bool = False,
) -> None:
    """Run ``parts`` until a signal or the first failure; ``metrics`` serves ``/metrics`` on
    ``RELAYPUSH_METRICS_PORT`` (for parts that have no HTTP API of their own)."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        backends = await stack.enter_async_context(
            open_backends(settings, database=database, migrate_tables=migrate_tables)
        )
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


def _metrics_of_all_workers(settings: Settings) -> contextlib.AbstractContextManager[object]:
    """With several API processes, every one of them serves the metrics of all (the workers
    it starts inherit the directory); a process started by ``serve`` inherits serve's."""
    if (settings.api_workers or 1) > 1 and not os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        return shared_between_processes()
    return contextlib.nullcontext()


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


async def _children(backends: Backends, stop: asyncio.Event) -> None:
    """``serve``'s API workers and dispatcher, in processes of their own, kept running."""
    settings = backends.settings
    env = dict(os.environ)
    env["RELAYPUSH_NATS_URL"] = backends.nats_url
    if backends.database_url:
        env["RELAYPUSH_DATABASE_URL"] = backends.database_url
    env["RELAYPUSH_API_WORKERS"] = str(settings.api_workers or usable_cores())
    supervisor = Supervisor([Child("api", ["api"]), Child("dispatcher", ["dispatcher"])], env)
    await supervisor.run(stop)


async def serve(settings: Settings) -> None:
    """Everything on one machine: the embedded servers where no URL is set, the projector and
    the audit chainer in this process, and the API workers (one per core unless
    ``RELAYPUSH_API_WORKERS`` says otherwise) and the dispatcher in processes of their own.
    All of them share their metrics: ``/metrics`` on the API reports every process."""
    with shared_between_processes():
        await _run(settings, (_children, _projector, _chainer, _retention), database=True)


async def run_api(settings: Settings, *, worker: bool = False) -> None:
    """The API alone; ``worker`` marks a process started by another API process. PostgreSQL
    is not needed to start (the deduplication index is read when it is up)."""
    part = functools.partial(_api, worker=True) if worker else _api
    with contextlib.nullcontext() if worker else _metrics_of_all_workers(settings):
        await _run(settings, (part,), database=True, migrate_tables=False)


async def run_dispatcher(settings: Settings) -> None:
    await _run(settings, (_dispatcher,), database=bool(settings.credentials_key), metrics=True)


async def run_projector(settings: Settings) -> None:
    await _run(settings, (_projector, _chainer, _retention), database=True, metrics=True)
