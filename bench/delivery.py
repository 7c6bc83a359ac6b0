"""Benchmark: signed pushes end to end, API → JetStream → dispatcher → APNs, FCM and Web Push
stand-ins.

    .venv/bin/python -m bench.delivery [--requests 10000] [--concurrency 32] [--rate 0]
        [--clients 200] [--fcm-share 0.5] [--webpush-share 0.2] [--api-workers 2] [--dispatchers 1]
        [--dispatcher-concurrency 64] [--repeat 1] [--profile]

Starts an embedded NATS JetStream, an APNs stand-in (token auth with a fresh ``.p8`` key) and an
FCM stand-in (OAuth through its service-account file), each in a process of its own on a free
port. Then, for each configuration (``--api-workers``, ``--dispatchers`` and
``--dispatcher-concurrency`` take comma-separated lists; every combination is run, ``--repeat``
times, in turn), it starts a ``relaypush api`` and ``relaypush dispatcher`` processes on a fresh
stream, pointed at the stand-ins through the settings a deployment uses for Apple and Google
(``RELAYPUSH_APNS_URL``, ``RELAYPUSH_APNS_CA_FILE``, ``RELAYPUSH_APNS_KEY_FILE``,
``RELAYPUSH_FCM_URL``, ``RELAYPUSH_FCM_CREDENTIALS_FILE``, ...), registers clients split between
``apns`` and ``fcm``, and sends pre-signed pushes over keep-alive connections at a fixed
concurrency (optionally paced at ``--rate`` per second). It reports:

- delivered notifications per second, from the first push to the last ``notification.delivered``
  event in the log;
- accept-to-delivered latency p50/p99 (``delivered.occurred_at - accepted.occurred_at`` of each
  notification, read back from the log), which includes any backlog when the pushes come in
  faster than they are delivered;
- what was lost or sent twice: every accepted notification must have exactly one delivered event
  and no failed event, and each stand-in must have received each delivered notification exactly
  once and the others not at all (the APNs stand-in counts requests per ``apns-id``, the FCM one
  per message; they write their counts when stopped);
- CPU per process over the run (from ``/proc``), what other processes on the machine took, and
  CPU milliseconds per delivered notification, which a noisy machine disturbs much less than a
  rate; with ``--profile``, py-spy profiles of the API and dispatcher processes (raw stacks kept
  under bench/results/), summarised by where the samples land.

In the same run (before and after the end-to-end runs) it measures the ceiling: what the
stand-ins take from a bare client in this process at ``--ceiling-concurrency`` in flight, APNs
through the project's own ``ApnsProvider`` and FCM through its ``FcmProvider`` (OAuth through
the stand-in's token endpoint), each alone and both at once in the same split as the pushes.
Results are printed and written as JSON to bench/results/.

``python -m bench.delivery --provider-clients [--node-dir DIR] ...`` measures only the APNs and
FCM clients: client CPU per send of each candidate client, each in a process of its own, next
to the stand-ins' and the Node.js peer's (see ``bench/provider_clients.py``).

Web Push (``--webpush-share`` of the clients, the rest split by ``--fcm-share``) goes to the
Web Push stand-in (VAPID checked, every message decrypted and counted by its blob), configured
through ``RELAYPUSH_VAPID_*``, ``RELAYPUSH_WEBPUSH_HOSTS`` and ``RELAYPUSH_WEBPUSH_CA_FILE``; its
ceiling step sends through the project's ``WebPushProvider``. Every ceiling step prints the
client's CPU per send, so the three providers' client costs stand side by side.

``python -m bench.delivery --stand-in apns|fcm|webpush ...`` is a stand-in process (the
``relaypush.testing`` stand-ins, counting what they receive); the benchmark starts them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import nats
import nats.js.errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.loadgen import build_request, percentile, run_load
from bench.push import free_port, wait_healthy
from eventstore.jetstream import JetStreamEventLog
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.config import Settings
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.fcm import FcmProvider
from relaypush.delivery.outcomes import Delivered, Target
from relaypush.delivery.vapid import VapidKey
from relaypush.delivery.webpush import WebPushProvider
from relaypush.domain.events import (
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotifyMessage,
    decode_event,
)
from relaypush.domain.provider_payload import apns_id
from relaypush.embedded import EmbeddedNats, die_with_parent
from relaypush.logs import configure_logging
from relaypush.testing.apns import ApnsStandIn
from relaypush.testing.fcm import FcmStandIn
from relaypush.testing.http2 import StandInRequest, StandInResponse
from relaypush.testing.webpush import PushRecord, WebPushStandIn

RESULTS = Path(__file__).resolve().parent / "results"
TOPIC: Final = "com.example.bench"
KEY_ID: Final = "BENCHKEY01"
VAPID_SUBJECT: Final = "mailto:bench@example.com"
TEAM_ID: Final = "BENCHTEAM1"
DURABLE: Final = "dispatcher"  # the durable consumer every ``relaypush dispatcher`` shares
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


# -- the stand-in processes ---------------------------------------------------------------------


class _CountingApns(ApnsStandIn):
    """The APNs stand-in, counting requests per ``apns-id`` and answers per status."""

    def __init__(self) -> None:
        super().__init__(record=False)
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    async def handle(self, request: StandInRequest) -> StandInResponse:
        response = await super().handle(request)
        self.counts[request.headers.get("apns-id", "")] += 1
        self.statuses[response.status] += 1
        return response


def _fcm_key(document: Any) -> str:
    """What identifies one notification in an FCM send: the blob (unique per push here)."""
    message = document.get("message") if isinstance(document, dict) else None
    data = message.get("data") if isinstance(message, dict) else None
    blob = data.get("blob") if isinstance(data, dict) else None
    return blob if isinstance(blob, str) else ""


def _webpush_key(record: PushRecord) -> str:
    """What identifies one notification sent to the Web Push stand-in: its decrypted blob."""
    try:
        blob = json.loads(record.message or b"{}").get("blob")
    except ValueError:
        return ""
    return blob if isinstance(blob, str) else ""


async def _serve_stand_in(args: argparse.Namespace) -> None:
    """One stand-in until SIGTERM; then its counts go to ``--summary`` as JSON."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counts: Counter[str]
    statuses: Counter[int]
    if args.stand_in == "apns":
        apns = _CountingApns()
        key_id, team_id, path = args.key.split(":", 2)
        apns.add_key(key_id, team_id, await asyncio.to_thread(Path(path).read_bytes))
        async with apns:
            print(f"url {apns.url}\nca_file {apns.ca_file}\nready", flush=True)
            await stop.wait()
        counts, statuses = apns.counts, apns.statuses
    elif args.stand_in == "webpush":
        push = WebPushStandIn()
        async with push:
            key = args.application_server_key
            tokens = [
                push.subscribe(application_server_key=key).token()
                for _ in range(args.subscriptions)
            ]
            await asyncio.to_thread(Path(args.subscriptions_file).write_text, json.dumps(tokens))
            print(f"url {push.url}\nca_file {push.ca_file}\nready", flush=True)
            await stop.wait()
        counts = Counter(_webpush_key(r) for r in push.records)
        statuses = Counter(r.status for r in push.records)
    else:
        fcm = FcmStandIn()
        async with fcm:
            credentials = Path(args.credentials_file)
            info = json.dumps(fcm.service_account_info())
            await asyncio.to_thread(credentials.write_text, info)
            print(f"url {fcm.url}\nca_file {fcm.ca_file}\nready", flush=True)
            await stop.wait()
        counts = Counter(_fcm_key(r.json) for r in fcm.requests)
        statuses = Counter(r.status for r in fcm.requests)
    summary = {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in statuses.items()},
        "counts": dict(counts),
    }
    await asyncio.to_thread(Path(args.summary).write_text, json.dumps(summary))
    print(f"summary {args.summary}", flush=True)


@dataclass(slots=True)
class StandIn:
    """A stand-in process the benchmark started, and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    ca_file: Path
    summary_file: Path

    def stop(self) -> dict[str, Any]:
        """Stop it and return its counts."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        summary: dict[str, Any] = json.loads(self.summary_file.read_text())
        return summary


async def start_stand_in(name: str, tmp: Path, *extra: str) -> StandIn:
    summary = tmp / f"{name}-summary.json"
    command = [
        sys.executable,
        "-m",
        "bench.delivery",
        "--stand-in",
        name,
        "--summary",
        str(summary),
    ]
    proc = subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, preexec_fn=die_with_parent(signal.SIGTERM)
    )
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    while "ready" not in seen:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=30)
        if not line:
            raise SystemExit(f"the {name} stand-in exited with {proc.wait()}")
        key, _, value = line.decode().strip().partition(" ")
        seen[key] = value
    return StandIn(name, proc, seen["url"], Path(seen["ca_file"]), summary)


# -- process accounting and profiles ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def machine_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) clock ticks of the whole machine so far, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return user + nice + system + irq + softirq, steal, sum(values)


def cpu_by_role(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def start_profiles(
    roles: dict[str, list[int]], directory: Path, seconds: int
) -> list[tuple[str, Path, subprocess.Popen[bytes]]]:
    """py-spy ``record`` on every process of the roles (raw stacks, 100 samples/s)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    started = []
    for role, pids in roles.items():
        for pid in pids:
            out = directory / f"{role.split()[0]}-{pid}.txt"
            command = [str(py_spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "100"]
            command += ["--nonblocking", "-f", "raw", "-o", str(out)]
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append((role, out, proc))
    return started


_BUCKETS: Final = (
    ("relaypush/", "relaypush"),
    ("eventstore/", "eventstore"),
    ("projections/", "projections"),
    ("nats/", "nats-py"),
    ("h2/", "h2"),
    ("hpack/", "hpack"),
    ("hyperframe/", "h2"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpcore"),
    ("aioapns/", "aioapns"),
    ("uvicorn/", "uvicorn"),
    ("starlette/", "starlette"),
    ("litestar/", "litestar"),
    ("msgspec/", "msgspec"),
    ("structlog/", "structlog"),
    ("cryptography/", "cryptography"),
    ("uvloop/", "uvloop"),
    ("asyncio/", "asyncio"),
    ("ssl.py", "ssl"),
    ("json/", "json"),
    ("uuid.py", "uuid"),
)


def _bucket(frame: str) -> str:
    for needle, name in _BUCKETS:
        if needle in frame:
            return name
    return "other"


def summarise_profile(files: Sequence[Path], top: int = 12) -> dict[str, Any]:
    """Samples of py-spy raw files: by package of the innermost frame, by innermost function,
    and by function anywhere on the stack (relaypush and eventstore frames only)."""
    total = 0
    by_package: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            by_package[_bucket(frames[-1])] += count
            by_leaf[_short(frames[-1])] += count
            for frame in {_short(f) for f in frames if "relaypush/" in f or "eventstore/" in f}:
                inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "by_package": shares(by_package),
        "by_function": shares(by_leaf),
        "inclusive": shares(inclusive),
    }


def _short(frame: str) -> str:
    """``function (path/to/site-packages/pkg/mod.py:12)`` → ``function (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


# -- the ceiling: bare clients against the stand-ins -------------------------------------------


async def drive(count: int, concurrency: int, send: Callable[[int], Awaitable[bool]]) -> int:
    """Call ``send(0..count-1)`` with ``concurrency`` in flight; how many returned True."""
    numbers = iter(range(count))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for i in numbers:
            if await send(i):
                ok += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def _blob(text: str, *, encrypted: bool = False) -> str:
    """A blob unique to ``text``: a cleartext Notify message (which relaypush seals at rest
    under the client's key), or opaque bytes standing for an encrypted envelope."""
    if encrypted:
        return base64.b64encode(b"envelope:" + text.encode() + bytes(48)).decode()
    return base64.b64encode(json.dumps({"title": "Bench", "body": text}).encode()).decode()


#: ``flags`` of the pushes: NOTIFY (16), plus ENCRYPTED (1) for encrypted blobs
_FLAGS: Final = {False: 16, True: 17}


def _notification(
    tenant: str, client: str, message_id: str, *, encrypted: bool
) -> NotificationAccepted:
    """An accepted notification as the dispatcher hands it to a provider (cleartext opened)."""
    return NotificationAccepted(
        event_id=uuid.uuid4().hex,
        occurred_at=datetime.now(UTC),
        tenant_id=tenant,
        client_id=client,
        message_id=message_id,
        dedup_key=message_id,
        topic="ab12",
        flags=_FLAGS[encrypted],
        encrypted=encrypted,
        blob=_blob(message_id, encrypted=encrypted),
        notify=None if encrypted else NotifyMessage(title="Bench", body=message_id),
    )


@dataclass(slots=True)
class Ceiling:
    """What the stand-ins took from bare clients; keys of every notification sent to them."""

    apns_per_s: float = 0.0
    fcm_per_s: float = 0.0
    webpush_per_s: float = 0.0
    both_per_s: float = 0.0
    failures: int = 0
    #: per step, each process's CPU use as a share of one core
    cores: dict[str, dict[str, float]] = field(default_factory=dict)
    apns_keys: set[str] = field(default_factory=set)
    fcm_keys: set[str] = field(default_factory=set)
    webpush_keys: set[str] = field(default_factory=set)


async def measure_ceiling(
    settings: Settings,
    fcm_info: dict[str, Any],
    subscriptions: Sequence[str],
    *,
    count: int,
    concurrency: int,
    fcm_share: float,
    encrypted: bool,
    label: str,
    roles: dict[str, list[int]],
) -> Ceiling:
    """APNs through ``ApnsProvider``, FCM through ``FcmProvider``, Web Push through
    ``WebPushProvider``, each alone, then APNs and FCM both."""
    result = Ceiling()
    apns = ApnsProvider.from_settings(settings, sandbox=False, timeout=settings.send_timeout)
    assert apns is not None
    webpush = WebPushProvider.from_settings(settings, timeout=settings.send_timeout)
    assert webpush is not None
    fcm = FcmProvider.from_service_account(
        fcm_info,
        base_url=settings.fcm_url,
        verify=settings.fcm_ca_file,
        timeout=settings.send_timeout,
    )

    def apns_batch(tag: str, n: int) -> Callable[[int], Awaitable[bool]]:
        token = "cc" * 32
        batch = []
        for i in range(n):
            message_id = f"{label}-{tag}-{i}"
            client = f"ceiling-{i % 100}"
            batch.append(_notification("ceiling", client, message_id, encrypted=encrypted))
            result.apns_keys.add(apns_id("ceiling", client, message_id))

        async def send(i: int) -> bool:
            target = Target(
                tenant_id="ceiling", client_id=batch[i].client_id, provider="apns", token=token
            )
            return isinstance(await apns.send(batch[i], target), Delivered)

        return send

    def fcm_batch(tag: str, n: int) -> Callable[[int], Awaitable[bool]]:
        batch = []
        for i in range(n):
            message_id = f"{label}-{tag}-{i}"
            client = f"ceiling-{i % 100}"
            notification = _notification("ceiling", client, message_id, encrypted=encrypted)
            batch.append(
                (notification, Target("ceiling", client, "fcm", f"ceiling-token-{i % 100}"))
            )
            assert notification.blob is not None
            result.fcm_keys.add(notification.blob)

        async def send(i: int) -> bool:
            return isinstance(await fcm.send(*batch[i]), Delivered)

        return send

    def webpush_batch(tag: str, n: int) -> Callable[[int], Awaitable[bool]]:
        batch = []
        for i in range(n):
            message_id = f"{label}-{tag}-{i}"
            client = f"ceiling-{i % 100}"
            notification = _notification("ceiling", client, message_id, encrypted=encrypted)
            batch.append(notification)
            assert notification.blob is not None
            result.webpush_keys.add(notification.blob)

        async def send(i: int) -> bool:
            token = subscriptions[i % len(subscriptions)]
            target = Target(
                tenant_id="ceiling", client_id=batch[i].client_id, provider="webpush", token=token
            )
            return isinstance(await webpush.send(batch[i], target), Delivered)

        return send

    async def timed(step: str, *runs: tuple[int, int, Callable[[int], Awaitable[bool]]]) -> float:
        cpu_before = cpu_by_role(roles)
        started = time.perf_counter()
        done = await asyncio.gather(*(drive(n, c, send) for n, c, send in runs))
        elapsed = time.perf_counter() - started
        cpu_after = cpu_by_role(roles)
        result.cores[step] = {r: (cpu_after[r] - cpu_before[r]) / elapsed for r in roles}
        result.failures += sum(n for n, _, _ in runs) - sum(done)
        return sum(done) / elapsed

    try:
        # a short warm-up opens the connections and gets the JWT signed
        await timed("warm", (concurrency, concurrency, apns_batch("warm", concurrency)))
        await timed("warm", (concurrency, concurrency, fcm_batch("warm", concurrency)))
        await timed("warm", (concurrency, concurrency, webpush_batch("warm", concurrency)))
        result.failures = 0
        del result.cores["warm"]
        result.apns_per_s = await timed("apns", (count, concurrency, apns_batch("apns", count)))
        result.fcm_per_s = await timed("fcm", (count, concurrency, fcm_batch("fcm", count)))
        result.webpush_per_s = await timed(
            "webpush", (count, concurrency, webpush_batch("webpush", count))
        )
        n_fcm = round(count * fcm_share)
        c_fcm = max(1, round(concurrency * fcm_share)) if n_fcm else 0
        runs = []
        if count - n_fcm:
            runs.append((count - n_fcm, concurrency - c_fcm, apns_batch("both", count - n_fcm)))
        if n_fcm:
            runs.append((n_fcm, c_fcm, fcm_batch("both", n_fcm)))
        result.both_per_s = await timed("both", *runs)
    finally:
        await apns.close()
        await fcm.close()
        await webpush.close()
    return result


# -- one end-to-end configuration --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    api_workers: int
    dispatchers: int
    dispatcher_concurrency: int

    @property
    def label(self) -> str:
        return f"api{self.api_workers}-disp{self.dispatchers}x{self.dispatcher_concurrency}"


@dataclass(slots=True)
class Run:
    """One configuration's figures; the stand-in checks are filled in at the end."""

    config: Config
    pushes: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    push_seconds: float = 0.0
    accepted: int = 0
    delivered: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lost: int = 0
    duplicated_events: int = 0
    failed: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_window: float = 0.0
    machine_busy: float = 0.0
    machine_steal: float = 0.0
    drain_delivered: int = 0
    drain_seconds: float = 0.0
    profile: dict[str, dict[str, Any]] = field(default_factory=dict)
    delivered_unaccepted: int = 0
    #: what the stand-ins know each accepted notification by, and whether the log says delivered
    apns_keys: dict[str, bool] = field(default_factory=dict)
    fcm_keys: dict[str, bool] = field(default_factory=dict)
    webpush_keys: dict[str, bool] = field(default_factory=dict)
    standin_missing: int = 0
    standin_duplicates: int = 0
    standin_unrecorded: int = 0

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    @property
    def drain_per_s(self) -> float:
        """Delivered per second after the last push was answered: the dispatchers' pace once
        the API is idle (0 when nothing was left to deliver by then)."""
        return self.drain_delivered / self.drain_seconds if self.drain_seconds > 0.5 else 0.0

    def cpu_ms_per_delivered(self) -> dict[str, float]:
        """CPU milliseconds per delivered notification, by role, with ``relaypush`` (API,
        dispatchers and NATS: what a deployment runs) and ``total``. Other processes on the
        machine do not count here, which makes it steadier than a rate on a shared machine."""
        if not self.delivered:
            return {}
        ms = {role: sec * 1000 / self.delivered for role, sec in self.cpu.items()}
        ms["relaypush"] = sum(ms.get(r, 0.0) for r in ("api", "dispatcher", "nats-server"))
        ms["total"] = sum(self.cpu.values()) * 1000 / self.delivered
        return ms

    def row(self, ceiling: float) -> dict[str, Any]:
        return {
            "label": self.config.label,
            "api_workers": self.config.api_workers,
            "dispatchers": self.config.dispatchers,
            "dispatcher_concurrency": self.config.dispatcher_concurrency,
            "pushes": self.pushes,
            "statuses": self.statuses,
            "accepted_per_s": self.pushes / self.push_seconds if self.push_seconds else 0.0,
            "accepted": self.accepted,
            "delivered": self.delivered,
            "seconds": self.seconds,
            "delivered_per_s": self.delivered_per_s,
            "after_last_push_delivered": self.drain_delivered,
            "after_last_push_seconds": self.drain_seconds,
            "after_last_push_per_s": self.drain_per_s,
            "of_ceiling": self.delivered_per_s / ceiling if ceiling else None,
            "latency_p50_ms": percentile(self.latencies, 0.50) * 1000,
            "latency_p99_ms": percentile(self.latencies, 0.99) * 1000,
            "latency_max_ms": max(self.latencies, default=float("nan")) * 1000,
            "lost": self.lost,
            "duplicated_delivered_events": self.duplicated_events,
            "failed": self.failed,
            "delivered_without_accepted": self.delivered_unaccepted,
            "standin_missing": self.standin_missing,
            "standin_duplicates": self.standin_duplicates,
            "standin_sent_but_not_delivered_in_log": self.standin_unrecorded,
            "cpu_seconds": self.cpu,
            "cpu_window_seconds": self.cpu_window,
            "machine_busy": self.machine_busy,
            "machine_steal": self.machine_steal,
            "cpu_ms_per_delivered": self.cpu_ms_per_delivered(),
            "profile": self.profile,
        }


@dataclass(slots=True)
class Bench:
    """What every configuration shares: the servers, the key, the settings and the options."""

    args: argparse.Namespace
    nats: EmbeddedNats
    base_env: dict[str, str]
    relay_key: Ed25519PrivateKey
    roles: dict[str, list[int]]
    tmp: Path
    subscriptions: Sequence[str] = ()
    stamp: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))


@contextlib.contextmanager
def relaypush_processes(
    config: Config, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], list[subprocess.Popen[bytes]]]]:
    relaypush = str(Path(sys.executable).with_name("relaypush"))
    hook = die_with_parent(signal.SIGTERM)
    api = subprocess.Popen([relaypush, "api"], env=env, preexec_fn=hook)
    dispatchers: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(config.dispatchers):
            dispatchers.append(
                subprocess.Popen([relaypush, "dispatcher"], env=env, preexec_fn=hook)
            )
        yield api, dispatchers
    finally:
        for proc in [api, *dispatchers]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [api, *dispatchers]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_consumer(js: Any, stream: str, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Until the dispatchers' durable consumer exists."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a relaypush dispatcher exited")
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.consumer_info(stream, DURABLE)
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the dispatchers did not create their consumer")


async def wait_drained(
    js: Any, stream: str, procs: Sequence[subprocess.Popen[bytes]], within: float
) -> None:
    """Until the consumer has nothing pending and nothing waiting for an ack."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a relaypush process exited during the run")
        info = await js.consumer_info(stream, DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"deliveries did not finish within {within:g} s")


async def run_config(bench: Bench, config: Config, number: int) -> Run:
    args = bench.args
    run = Run(config)
    stream, prefix = f"BENCHD{number}", f"benchd{number}"
    port = free_port()
    env = {
        **bench.base_env,
        "RELAYPUSH_PORT": str(port),
        "RELAYPUSH_STREAM_NAME": stream,
        "RELAYPUSH_SUBJECT_PREFIX": prefix,
        "RELAYPUSH_API_WORKERS": str(config.api_workers),
        "RELAYPUSH_DISPATCHER_CONCURRENCY": str(config.dispatcher_concurrency),
    }
    nc = await nats.connect(bench.nats.url)
    js = nc.jetstream()
    with relaypush_processes(config, env) as (api, dispatchers):
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_healthy, base, api)
        await wait_consumer(js, stream, dispatchers)
        await asyncio.sleep(1.0)  # let every API worker and dispatcher finish starting

        # clients: webpush's share, then the rest split between apns and fcm
        n_web = round(args.clients * args.webpush_share)
        n_fcm = round((args.clients - n_web) * args.fcm_share)
        kinds = ["apns"] * (args.clients - n_web - n_fcm) + ["fcm"] * n_fcm + ["webpush"] * n_web
        clients = [f"c{number}-{i}" for i in range(args.clients)]
        async with httpx.AsyncClient(base_url=base) as http:

            async def register(i: int) -> bool:
                token = {
                    "apns": os.urandom(32).hex(),
                    "fcm": f"fcm-{clients[i]}",
                    "webpush": bench.subscriptions[i % max(1, len(bench.subscriptions))],
                }[kinds[i]]
                body = {"client_id": clients[i], "type": kinds[i], "token": token}
                response = await http.post("/clients", json=body)
                response.raise_for_status()
                return True

            await drive(len(clients), 16, register)

        # pre-signed pushes, each with its own message id and blob
        requests: list[bytes] = []
        now = int(time.time())
        for i in range(args.requests):
            message_id = uuid.uuid4().hex
            blob = _blob(message_id, encrypted=args.encrypted)
            payload = {"topic": "ab12", "flags": _FLAGS[args.encrypted], "blob": blob}
            body = json.dumps({"id": message_id, "payload": payload}).encode()
            sig, ts = make_relay_signature(bench.relay_key, now, body)
            headers = {
                "Content-Type": "application/json",
                "X-Ed25519-Signature": sig,
                "X-Ed25519-Timestamp": ts,
            }
            client = clients[i % len(clients)]
            requests.append(build_request("POST", f"/clients/{client}", base[7:], body, headers))

        roles = {
            **bench.roles,
            "api": [api.pid, *children(api.pid)],
            "dispatcher": [p.pid for p in dispatchers],
        }
        profiles = (
            start_profiles(
                {k: roles[k] for k in ("api", "dispatcher")},
                RESULTS / f"delivery-{bench.stamp}-profiles" / f"{number}-{config.label}",
                args.profile_seconds,
            )
            if args.profile
            else []
        )
        cpu_before, machine_before = cpu_by_role(roles), machine_ticks()
        window_start = time.perf_counter()
        first_push = datetime.now(UTC)
        load = await run_load("127.0.0.1", port, requests, args.concurrency, rate=args.rate)
        last_push = datetime.now(UTC)
        run.pushes, run.statuses, run.push_seconds = load.sent, load.statuses, load.elapsed
        await wait_drained(js, stream, [api, *dispatchers], args.drain_timeout)
        cpu_after, machine_after = cpu_by_role(roles), machine_ticks()
        run.cpu_window = time.perf_counter() - window_start
        run.cpu = {role: cpu_after[role] - cpu_before[role] for role in roles}
        busy, steal, total = (a - b for a, b in zip(machine_after, machine_before, strict=True))
        run.machine_busy, run.machine_steal = busy / total, steal / total
        for _, _, proc in profiles:
            await asyncio.to_thread(proc.wait)
        for role in ("api", "dispatcher"):
            files = [out for r, out, _ in profiles if r == role]
            if files:
                run.profile[role] = summarise_profile(files)
    await nc.close()

    # read the outcome back from the log
    event_log = await JetStreamEventLog.connect(bench.nats.url, stream=stream, prefix=prefix)
    accepted: dict[tuple[str, str], NotificationAccepted] = {}
    delivered: defaultdict[tuple[str, str], list[NotificationDelivered]] = defaultdict(list)
    failed: set[tuple[str, str]] = set()
    async for record in event_log.read():
        event = decode_event(record.data)
        if isinstance(event, NotificationAccepted):
            accepted[(event.client_id, event.message_id)] = event
        elif isinstance(event, NotificationDelivered):
            delivered[(event.client_id, event.message_id)].append(event)
        elif isinstance(event, NotificationDeliveryFailed):
            failed.add((event.client_id, event.message_id))
    await event_log.close()

    kind_of = dict(zip(clients, kinds, strict=True))
    run.accepted = len(accepted)
    run.failed = len(failed)
    last = first_push
    for key, notification in accepted.items():
        outcomes = delivered.get(key, [])
        kind = kind_of[notification.client_id]
        if kind == "apns":
            run.apns_keys[apns_id(notification.tenant_id, *key)] = bool(outcomes)
        else:  # the blob in the event may be sealed: the stand-in saw the one the push carried
            keys = run.fcm_keys if kind == "fcm" else run.webpush_keys
            keys[_blob(notification.message_id, encrypted=args.encrypted)] = bool(outcomes)
        if not outcomes:
            run.lost += 1
            continue
        run.duplicated_events += len(outcomes) - 1
        run.delivered += 1
        at = min(e.occurred_at for e in outcomes)
        last = max(last, at)
        run.drain_delivered += at > last_push
        run.latencies.append((at - notification.occurred_at).total_seconds())
    run.delivered_unaccepted = len([k for k in delivered if k not in accepted])
    run.seconds = (last - first_push).total_seconds()
    run.drain_seconds = (last - last_push).total_seconds()
    return run


def check_stand_ins(
    runs: Sequence[Run], apns: dict[str, Any], fcm: dict[str, Any], webpush: dict[str, Any]
) -> int:
    """Fill in each run's stand-in checks: every notification delivered according to the log
    reached its stand-in exactly once, none of the others reached it at all. Returns how many
    requests the stand-ins received for no notification of any run (ceiling sends included)."""
    known: set[str] = set()
    for run in runs:
        for keys, summary in (
            (run.apns_keys, apns),
            (run.fcm_keys, fcm),
            (run.webpush_keys, webpush),
        ):
            counts: dict[str, int] = summary["counts"]
            known |= keys.keys()
            for key, was_delivered in keys.items():
                seen = counts.get(key, 0)
                if was_delivered:
                    run.standin_missing += seen == 0
                    run.standin_duplicates += max(0, seen - 1)
                else:
                    run.standin_unrecorded += seen
    unknown = 0
    for summary in (apns, fcm, webpush):
        unknown += sum(n for key, n in summary["counts"].items() if key not in known)
    return unknown


# -- main --------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000, help="pushes per configuration")
    parser.add_argument("--concurrency", type=int, default=32, help="pushes in flight")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="pace pushes at this many per second (0: no pace)"
    )
    parser.add_argument("--clients", type=int, default=200, help="clients, split apns / fcm")
    parser.add_argument(
        "--fcm-share", type=float, default=0.5, help="share of fcm among the non-webpush clients"
    )
    parser.add_argument("--webpush-share", type=float, default=0.2, help="share of webpush clients")
    parser.add_argument(
        "--encrypted",
        action="store_true",
        help="encrypted blobs (flags 17) instead of cleartext Notify messages (flags 16)",
    )
    parser.add_argument("--api-workers", default="2", help="RELAYPUSH_API_WORKERS (list)")
    parser.add_argument("--dispatchers", default="1", help="dispatcher processes (list)")
    parser.add_argument(
        "--dispatcher-concurrency", default="64", help="RELAYPUSH_DISPATCHER_CONCURRENCY (list)"
    )
    parser.add_argument("--send-timeout", type=float, default=10.0, help="RELAYPUSH_SEND_TIMEOUT")
    parser.add_argument("--log-level", default="warning", help="RELAYPUSH_LOG_LEVEL")
    parser.add_argument("--ceiling-requests", type=int, default=6000, help="per ceiling step")
    parser.add_argument("--ceiling-concurrency", type=int, default=128, help="at most 150")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run every configuration this many times"
    )
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--profile", action="store_true", help="py-spy the API and dispatcher")
    parser.add_argument("--profile-seconds", type=int, default=8)
    parser.add_argument(
        "--provider-clients",
        action="store_true",
        help="only measure client CPU per send of candidate APNs and FCM clients "
        "(bench/provider_clients.py)",
    )
    from bench.provider_clients import add_arguments

    add_arguments(parser.add_argument_group("--provider-clients"))
    # the stand-in processes the benchmark starts
    parser.add_argument("--stand-in", choices=["apns", "fcm", "webpush"], help=argparse.SUPPRESS)
    parser.add_argument("--application-server-key", help=argparse.SUPPRESS)
    parser.add_argument("--subscriptions", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--subscriptions-file", help=argparse.SUPPRESS)
    parser.add_argument("--summary", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--credentials-file", help=argparse.SUPPRESS)
    return parser


async def main(args: argparse.Namespace) -> None:
    configs = [
        Config(w, d, c)
        for w, d, c in itertools.product(
            _ints(args.api_workers), _ints(args.dispatchers), _ints(args.dispatcher_concurrency)
        )
    ]
    relay_key = Ed25519PrivateKey.generate()
    public_hex = relay_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="relaypush-delivery-") as tmp_name:
        tmp = Path(tmp_name)
        key_file = tmp / "AuthKey_BENCH.p8"
        key_file.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        credentials_file = tmp / "fcm-service-account.json"
        vapid = ec.generate_private_key(ec.SECP256R1())
        vapid_file = tmp / "vapid.pem"
        vapid_file.write_bytes(
            vapid.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        subscriptions_file = tmp / "webpush-subscriptions.json"
        server = EmbeddedNats(tmp / "nats")
        server.start()
        apns = await start_stand_in("apns", tmp, "--key", f"{KEY_ID}:{TEAM_ID}:{key_file}")
        fcm = await start_stand_in("fcm", tmp, "--credentials-file", str(credentials_file))
        push = await start_stand_in(
            "webpush",
            tmp,
            "--application-server-key",
            VapidKey(vapid, VAPID_SUBJECT).public_key,
            "--subscriptions-file",
            str(subscriptions_file),
        )
        try:
            settings = Settings(
                apns_topic=TOPIC,
                apns_key_file=key_file,
                apns_key_id=KEY_ID,
                apns_team_id=TEAM_ID,
                apns_url=apns.url,
                apns_sandbox_url=apns.url,
                apns_ca_file=apns.ca_file,
                fcm_url=fcm.url,
                fcm_ca_file=fcm.ca_file,
                fcm_credentials_file=credentials_file,
                vapid_private_key_file=vapid_file,
                vapid_subject=VAPID_SUBJECT,
                webpush_hosts=("127.0.0.1",),
                webpush_ca_file=push.ca_file,
                send_timeout=args.send_timeout,
            )
            fcm_info = json.loads(credentials_file.read_text())
            subscriptions: list[str] = json.loads(subscriptions_file.read_text())
            ceiling_args = {
                "count": args.ceiling_requests,
                "concurrency": args.ceiling_concurrency,
                "fcm_share": args.fcm_share,
                "encrypted": args.encrypted,
            }
            assert server.pid is not None
            roles = {
                "nats-server": [server.pid],
                "apns stand-in": [apns.proc.pid],
                "fcm stand-in": [fcm.proc.pid],
                "webpush stand-in": [push.proc.pid],
                "load generator": [os.getpid()],
            }
            ceiling_roles = {
                "client": [os.getpid()],
                "apns stand-in": [apns.proc.pid],
                "fcm stand-in": [fcm.proc.pid],
                "webpush stand-in": [push.proc.pid],
            }
            before = await measure_ceiling(
                settings,
                fcm_info,
                subscriptions,
                label="before",
                roles=ceiling_roles,
                **ceiling_args,
            )
            base_env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")},
                "RELAYPUSH_NATS_URL": server.url,
                "RELAYPUSH_DATA_DIR": str(tmp / "data"),
                "RELAYPUSH_RELAY_PUBLIC_KEY": public_hex,
                "RELAYPUSH_LOG_LEVEL": args.log_level,
                "RELAYPUSH_RATE_LIMIT_PER_MINUTE": "0",
                "RELAYPUSH_SEND_TIMEOUT": str(args.send_timeout),
                "RELAYPUSH_APNS_TOPIC": TOPIC,
                "RELAYPUSH_APNS_KEY_FILE": str(key_file),
                "RELAYPUSH_APNS_KEY_ID": KEY_ID,
                "RELAYPUSH_APNS_TEAM_ID": TEAM_ID,
                "RELAYPUSH_APNS_URL": apns.url,
                "RELAYPUSH_APNS_SANDBOX_URL": apns.url,
                "RELAYPUSH_APNS_CA_FILE": str(apns.ca_file),
                "RELAYPUSH_FCM_URL": fcm.url,
                "RELAYPUSH_FCM_CA_FILE": str(fcm.ca_file),
                "RELAYPUSH_FCM_CREDENTIALS_FILE": str(credentials_file),
                "RELAYPUSH_VAPID_PRIVATE_KEY_FILE": str(vapid_file),
                "RELAYPUSH_VAPID_SUBJECT": VAPID_SUBJECT,
                "RELAYPUSH_WEBPUSH_HOSTS": "127.0.0.1",
                "RELAYPUSH_WEBPUSH_CA_FILE": str(push.ca_file),
            }
            bench = Bench(args, server, base_env, relay_key, roles, tmp, subscriptions)
            schedule = [config for _ in range(args.repeat) for config in configs]
            for number, config in enumerate(schedule, 1):
                print(f"running {config.label} ...", file=sys.stderr, flush=True)
                runs.append(await run_config(bench, config, number))
            after = await measure_ceiling(
                settings,
                fcm_info,
                subscriptions,
                label="after",
                roles=ceiling_roles,
                **ceiling_args,
            )
        finally:
            apns_summary = apns.stop()
            fcm_summary = fcm.stop()
            webpush_summary = push.stop()
            server.stop()
    unknown = check_stand_ins(runs, apns_summary, fcm_summary, webpush_summary)
    for ceiling in (before, after):
        for keys, summary in (
            (ceiling.apns_keys, apns_summary),
            (ceiling.fcm_keys, fcm_summary),
            (ceiling.webpush_keys, webpush_summary),
        ):
            unknown -= sum(summary["counts"].get(k, 0) for k in keys)
    summaries = {"apns": apns_summary, "fcm": fcm_summary, "webpush": webpush_summary}
    report(args, runs, before, after, summaries, unknown, bench.stamp)


_CEILING_FIELDS: Final = ("apns_per_s", "fcm_per_s", "webpush_per_s", "both_per_s")


def report(
    args: argparse.Namespace,
    runs: Sequence[Run],
    before: Ceiling,
    after: Ceiling,
    summaries: dict[str, dict[str, Any]],
    unknown: int,
    stamp: str,
) -> None:
    ceiling = (before.both_per_s + after.both_per_s) / 2
    print(
        f"ceiling: bare clients in this process, {args.ceiling_concurrency} in flight, "
        f"{args.ceiling_requests} sends per step; before / after the end-to-end runs, and the "
        "CPU (share of one core) of client, APNs, FCM and Web Push stand-ins before"
    )
    steps = (
        ("apns", "APNs via ApnsProvider", before.apns_per_s, after.apns_per_s),
        ("fcm", "FCM via FcmProvider", before.fcm_per_s, after.fcm_per_s),
        ("webpush", "Web Push via provider", before.webpush_per_s, after.webpush_per_s),
        ("both", f"both ({args.fcm_share:.0%} FCM)", before.both_per_s, after.both_per_s),
    )
    for step, title, first, second in steps:
        shares = before.cores.get(step, {})
        cores = " / ".join(f"{share:.0%}" for share in shares.values())
        per_send = sum(shares.values()) * 1000 / first if first else 0.0
        print(
            f"  {title:<22} {first:>8,.0f} /s {second:>8,.0f} /s   CPU {cores}, "
            f"{per_send:.2f} ms per send"
        )
    client = {
        step: before.cores.get(step, {}).get("client", 0.0) * 1000 / rate
        for step, rate in (
            ("apns", before.apns_per_s),
            ("fcm", before.fcm_per_s),
            ("webpush", before.webpush_per_s),
        )
        if rate
    }
    print(
        "  client CPU per send (this process alone): "
        + ", ".join(f"{step} {ms:.3f} ms" for step, ms in client.items())
    )
    print(f"  failed sends: {before.failures + after.failures}")
    pace = f", paced at {args.rate:g}/s" if args.rate else ""
    print(
        f"\nend to end: {args.requests} signed pushes at concurrency {args.concurrency}{pace}, "
        f"{args.clients} clients ({args.webpush_share:.0%} webpush, of the rest "
        f"{args.fcm_share:.0%} fcm). deliv/s: first push to last "
        "delivered; drain/s: after the last push; latency: accepted → delivered"
    )
    head = (
        f"{'config':<18} {'pushes/s':>8} {'deliv/s':>8} {'of ceil':>7} {'drain/s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'dup':>4} {'failed':>6} {'sent 2x':>7} "
        f"{'unsent':>6}"
    )
    print(head)
    rows = []
    for run in runs:
        row = run.row(ceiling)
        rows.append(row)
        print(
            f"{run.config.label:<18} {row['accepted_per_s']:>8,.0f} "
            f"{row['delivered_per_s']:>8,.0f} {row['of_ceiling']:>7.0%} "
            f"{run.drain_per_s:>7,.0f} "
            f"{row['latency_p50_ms']:>7.0f} {row['latency_p99_ms']:>7.0f} "
            f"{run.lost:>5} {run.duplicated_events:>4} {run.failed:>6} "
            f"{run.standin_duplicates:>7} {run.standin_missing:>6}"
        )
        if set(run.statuses) != {202}:
            print(f"  statuses: {run.statuses}")
        if run.delivered_unaccepted or run.standin_unrecorded:
            print(
                f"  delivered without an accepted event: {run.delivered_unaccepted}; "
                f"sent to a stand-in but not delivered in the log: {run.standin_unrecorded}"
            )
    medians: dict[str, dict[str, float]] = {}
    if args.repeat > 1:
        print(f"medians over {args.repeat} runs of each configuration:")
        for label in dict.fromkeys(row["label"] for row in rows):
            mine = [row for row in rows if row["label"] == label]
            medians[label] = {
                key: statistics.median(row[key] for row in mine)
                for key in ("delivered_per_s", "latency_p50_ms", "latency_p99_ms")
            }
            for key in ("total", "relaypush", "api", "dispatcher", "nats-server"):
                medians[label][f"cpu_ms_{key}"] = statistics.median(
                    row["cpu_ms_per_delivered"].get(key, 0.0) for row in mine
                )
            m = medians[label]
            print(
                f"  {label:<18} {m['delivered_per_s']:>8,.0f} delivered/s "
                f"({m['delivered_per_s'] / ceiling:.0%} of the ceiling), "
                f"p50 {m['latency_p50_ms']:,.0f} ms, p99 {m['latency_p99_ms']:,.0f} ms, "
                f"CPU per notification {m['cpu_ms_total']:.2f} ms "
                f"(relaypush {m['cpu_ms_relaypush']:.2f}: api {m['cpu_ms_api']:.2f}, "
                f"dispatcher {m['cpu_ms_dispatcher']:.2f}, nats {m['cpu_ms_nats-server']:.2f})"
            )
    print(f"stand-in requests that no run or ceiling sent: {unknown}")
    answers = ", ".join(f"{name} {summary['statuses']}" for name, summary in summaries.items())
    print(f"stand-in answers: {answers}")
    ncpu = os.cpu_count() or 1
    print(
        f"\nCPU from the first push until all was delivered, in cores (the machine has {ncpu}); "
        "'others' is what processes outside the benchmark used"
    )
    for run in runs:
        wall = run.cpu_window
        parts = ", ".join(f"{role} {sec / wall:.2f}" for role, sec in run.cpu.items())
        others = run.machine_busy * ncpu - sum(run.cpu.values()) / wall
        print(
            f"  {run.config.label}: {wall:.1f} s, machine {run.machine_busy:.0%} busy "
            f"({run.machine_steal:.0%} stolen): {parts}, others {max(0.0, others):.2f}"
        )
        ms = run.cpu_ms_per_delivered()
        if ms:
            print(
                f"    CPU per delivered notification {ms['total']:.2f} ms, of which relaypush "
                f"{ms['relaypush']:.2f} ms (api {ms.get('api', 0):.2f}, dispatcher "
                f"{ms.get('dispatcher', 0):.2f}, nats {ms.get('nats-server', 0):.2f}): "
                f"{ncpu} cores of its own would deliver at most "
                f"{ncpu * 1000 / ms['total']:,.0f}/s here, "
                f"{ncpu * 1000 / ms['relaypush']:,.0f}/s without stand-ins and load generator"
            )
        for role, profile in run.profile.items():
            print(f"  py-spy {role} ({profile['samples']} samples):")
            for title in ("by_package", "inclusive", "by_function"):
                items = ", ".join(f"{name} {share:.0%}" for name, share in profile[title][:8])
                print(f"    {title}: {items}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"delivery-{stamp}.json"
    document = {
        "options": {k: v for k, v in vars(args).items() if v is not None},
        "ceiling": {
            "before": {k: getattr(before, k) for k in _CEILING_FIELDS},
            "after": {k: getattr(after, k) for k in _CEILING_FIELDS},
            "client_cpu_ms_per_send": client,
            "failures": before.failures + after.failures,
            "cpu_share_of_core": {"before": before.cores, "after": after.cores},
        },
        "runs": rows,
        "medians": medians,
        "stand_ins": {
            **{
                name: {k: v for k, v in summary.items() if k != "counts"}
                for name, summary in summaries.items()
            },
            "requests_nobody_sent": unknown,
        },
    }
    out.write_text(json.dumps(document, indent=2))
    print(f"written to {out}")


def _entry() -> None:
    args = _parser().parse_args()
    if args.provider_clients:
        from bench.provider_clients import run

        configure_logging("console", "warning")
        run(args)
        return
    if args.stand_in:
        # plain asyncio, as ``python -m relaypush.testing.apns`` runs them: the stand-ins' server
        # wants an ``asyncio.Transport``, which uvloop's TLS transport is not
        asyncio.run(_serve_stand_in(args))
        return
    import uvloop

    configure_logging("console", "warning")  # the ceiling's providers log at info
    uvloop.run(main(args))


if __name__ == "__main__":
    _entry()
