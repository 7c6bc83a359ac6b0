"""Benchmark: what a million notifications cost the event log's server, and serve's accept rate.

    .venv/bin/python -m bench.scale [--notifications 1000000] [--clients 10000]
                                    [--serve-notifications 100000] [--compare-unique]

Part one starts its own NATS JetStream and PostgreSQL (embedded, free ports, temporary stores)
and relaypush as a deployment runs it (``relaypush api`` with one worker per core,
``relaypush dispatcher``, ``relaypush projector``), registers noop clients and pushes signed
notifications with unique ids through the API while they are delivered. It reports
nats-server's resident memory before, after, and after a restart of the server (with the time
the restart took), the stream's bytes and distinct subjects per notification, and the accept
rate next to the ceiling of the same run: bare pipelined JetStream publishes from one Python
process, on as many subjects as there are clients. ``--compare-unique`` also publishes the same
number of bare events on a subject each (the shape of the old per-message scheme) into a stream
of their own, and reports the memory that cost, so both shapes are measured on the same machine.

Part two runs ``relaypush serve`` as a user starts it (everything embedded, one command) and
reports the pushes it accepts per second while it delivers them.

Results are printed and written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js.api import StorageType, StreamConfig

from bench.loadgen import build_request, percentile, run_load
from bench.push import RESULTS, free_port, notify_blob, wait_healthy
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.embedded import EmbeddedNats, EmbeddedPostgres

STREAM = "SCALE"
PREFIX = "scale"
CHUNK = 20_000
"""Pushes built and sent per round (the load generator keeps them all in memory)."""


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def nats_pid(port: int) -> int:
    """The pid of the nats-server listening on ``port``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"nats-server") and str(port).encode() in cmdline:
            return int(entry.name)
    raise RuntimeError(f"no nats-server on port {port}")


async def stream_state(url: str, stream: str) -> dict[str, Any]:
    """The stream's state as the server reports it (nats-py drops ``num_subjects``)."""
    nc = await nats.connect(url)
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=30)
    finally:
        await nc.close()
    state: dict[str, Any] = json.loads(reply.data)["state"]
    return state


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def bare_rate(url: str, count: int, subjects: int) -> float:
    """Pipelined JetStream publishes per second from this process, on ``subjects`` subjects."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="CEILING", subjects=["ceiling.>"], storage=StorageType.FILE)
    )
    body = b'{"type":"notification.accepted","payload":"' + b"x" * 300 + b'"}'
    started = time.perf_counter()
    for base in range(0, count, 256):
        await asyncio.gather(
            *(
                js.publish(f"ceiling.{i % subjects}", body, headers={"Nats-Msg-Id": f"c{i}"})
                for i in range(base, min(count, base + 256))
            )
        )
    rate = count / (time.perf_counter() - started)
    await js.delete_stream("CEILING")
    await nc.close()
    return rate


async def unique_subject_cost(url: str, pid: int, count: int) -> dict[str, float]:
    """RSS growth of ``count`` bare events each on a subject of its own (the old scheme's
    shape), in a stream deleted afterwards."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    before = rss_mb(pid)
    await js.add_stream(
        StreamConfig(name="UNIQUE", subjects=["unique.>"], storage=StorageType.FILE)
    )
    body = b"x" * 300
    for base in range(0, count, 512):
        await asyncio.gather(
            *(
                js.publish(f"unique.t.n.c{i % 10000}.m{i}.accepted", body)
                for i in range(base, min(count, base + 512))
            )
        )
    after = rss_mb(pid)
    state = await stream_state(url, "UNIQUE")
    await js.delete_stream("UNIQUE")
    await nc.close()
    return {"rss_before_mb": before, "rss_after_mb": after, "subjects": state["num_subjects"]}


@dataclass(slots=True)
class Pusher:
    """Signs and sends pushes to ``clients`` through the API at ``port``."""

    key: Ed25519PrivateKey
    port: int
    clients: Sequence[str]

    def requests(self, count: int, offset: int) -> list[bytes]:
        blob = notify_blob()
        now = int(time.time())
        built = []
        for i in range(offset, offset + count):
            client = self.clients[i % len(self.clients)]
            body = json.dumps(
                {"id": uuid.uuid4().hex, "payload": {"topic": "ab12", "flags": 16, "blob": blob}}
            ).encode()
            sig, ts = make_relay_signature(self.key, now, body)
            built.append(
                build_request(
                    "POST",
                    f"/clients/{client}",
                    f"127.0.0.1:{self.port}",
                    body,
                    {
                        "Content-Type": "application/json",
                        "X-Ed25519-Signature": sig,
                        "X-Ed25519-Timestamp": ts,
                    },
                )
            )
        return built

    async def push(self, total: int, concurrency: int) -> dict[str, Any]:
        sent = accepted = 0
        elapsed = 0.0
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        while sent < total:
            count = min(CHUNK, total - sent)
            result = await run_load("127.0.0.1", self.port, self.requests(count, sent), concurrency)
            sent += result.sent
            elapsed += result.elapsed
            accepted += result.statuses.get(202, 0)
            latencies += result.latencies[:: max(1, len(result.latencies) // 2000)]
            for status, n in result.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
            print(f"  {sent:,} pushed, {accepted / elapsed:,.0f} accepted/s", file=sys.stderr)
        return {
            "pushed": sent,
            "accepted": accepted,
            "statuses": statuses,
            "accepted_per_s": accepted / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
        }


async def register(port: int, clients: Sequence[str]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for base in range(0, len(clients), 200):
            responses = await asyncio.gather(
                *(
                    http.post("/clients", json={"client_id": c, "type": "noop", "token": c})
                    for c in clients[base : base + 200]
                )
            )
            for response in responses:
                response.raise_for_status()


def delivered_count(database_url: str, schema: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {schema}.messages WHERE status = 'delivered'"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_delivered(database_url: str, schema: str, expected: int, timeout: float) -> float:
    """Seconds until ``expected`` notifications are delivered and projected."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if delivered_count(database_url, schema) >= expected:
            return time.monotonic() - started
        time.sleep(1.0)
    raise SystemExit(f"not every notification was delivered within {timeout:.0f} s")


def relay_key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")}
    env.update({"RELAYPUSH_LOG_LEVEL": "warning", "RELAYPUSH_RATE_LIMIT_PER_MINUTE": "0"})
    env.update(extra)
    return env


async def part_one(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    nats_server = EmbeddedNats(tmp / "nats")
    nats_server.start()
    postgres = EmbeddedPostgres(tmp / "postgres")
    postgres.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pid = nats_pid(port_of(nats_server.url))
        ceiling = await bare_rate(nats_server.url, args.bare, args.clients)
        unique = (
            await unique_subject_cost(nats_server.url, pid, args.notifications)
            if args.compare_unique
            else None
        )
        key, public_hex = relay_key()
        port = free_port()
        env = base_env(
            RELAYPUSH_NATS_URL=nats_server.url,
            RELAYPUSH_DATABASE_URL=postgres.url,
            RELAYPUSH_PORT=str(port),
            RELAYPUSH_RELAY_PUBLIC_KEY=public_hex,
            RELAYPUSH_STREAM_NAME=STREAM,
            RELAYPUSH_SUBJECT_PREFIX=PREFIX,
            RELAYPUSH_DATA_DIR=str(tmp / "data"),
        )
        relaypush = str(Path(sys.executable).with_name("relaypush"))
        for part in ("projector", "dispatcher", "api"):
            procs.append(subprocess.Popen([relaypush, part], env=env))
        wait_healthy(f"http://127.0.0.1:{port}", procs[-1])
        clients = [f"scale-{i}" for i in range(args.clients)]
        await register(port, clients)
        rss_before = rss_mb(pid)
        pushed = await Pusher(key, port, clients).push(args.notifications, args.concurrency)
        drained = wait_delivered(postgres.url, "relaypush", pushed["accepted"], 3600)
        state = await stream_state(nats_server.url, STREAM)
        rss_after = rss_mb(pid)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        procs.clear()
        nats_server.stop()
        started = time.perf_counter()
        nats_server.start()
        restarted = await stream_state(nats_server.url, STREAM)
        restart_s = time.perf_counter() - started
        rss_restarted = rss_mb(nats_pid(port_of(nats_server.url)))
        notifications = pushed["accepted"]
        return {
            "notifications": notifications,
            "clients": args.clients,
            "push": pushed,
            "ceiling_publish_per_s": ceiling,
            "accept_share_of_ceiling": pushed["accepted_per_s"] / ceiling,
            "drained_after_s": drained,
            "nats_rss_before_mb": rss_before,
            "nats_rss_after_mb": rss_after,
            "nats_rss_growth_mb_per_million": (rss_after - rss_before) * 1e6 / notifications,
            "nats_rss_after_restart_mb": rss_restarted,
            "restart_s": restart_s,
            "stream_messages": state["messages"],
            "stream_bytes": state["bytes"],
            "stream_bytes_per_notification": state["bytes"] / notifications,
            "stream_subjects": state["num_subjects"],
            "stream_messages_after_restart": restarted["messages"],
            "unique_subjects_comparison": unique,
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        nats_server.stop()
        postgres.stop()


async def part_two(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    key, public_hex = relay_key()
    port = free_port()
    env = base_env(
        RELAYPUSH_PORT=str(port),
        RELAYPUSH_RELAY_PUBLIC_KEY=public_hex,
        RELAYPUSH_DATA_DIR=str(tmp / "serve"),
    )
    relaypush = str(Path(sys.executable).with_name("relaypush"))
    proc = subprocess.Popen([relaypush, "serve"], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=120)
        clients = [f"serve-{i}" for i in range(min(args.clients, 1000))]
        await register(port, clients)
        pushed = await Pusher(key, port, clients).push(args.serve_notifications, args.concurrency)
        runtime = json.loads((tmp / "serve" / "runtime.json").read_text())
        drained = wait_delivered(runtime["database_url"], "relaypush", pushed["accepted"], 1800)
        return {"push": pushed, "drained_after_s": drained}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--serve-notifications", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--bare", type=int, default=100_000, help="bare publishes for the ceiling")
    parser.add_argument("--compare-unique", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="relaypush-scale-") as tmp:
        one = asyncio.run(part_one(args, Path(tmp)))
        two = None if args.skip_serve else asyncio.run(part_two(args, Path(tmp)))
    push = one["push"]
    print(f"\n{one['notifications']:,} notifications over {one['clients']:,} clients")
    print(
        f"accepted {push['accepted_per_s']:,.0f}/s (p50 {push['p50_ms']:.1f} ms, p99"
        f" {push['p99_ms']:.1f} ms) = {one['accept_share_of_ceiling']:.0%} of bare pipelined"
        f" publishes ({one['ceiling_publish_per_s']:,.0f}/s)"
    )
    print(
        f"nats-server RSS: {one['nats_rss_before_mb']:.0f} MB before,"
        f" {one['nats_rss_after_mb']:.0f} MB after"
        f" ({one['nats_rss_growth_mb_per_million']:.0f} MB per million),"
        f" {one['nats_rss_after_restart_mb']:.0f} MB after a restart taking"
        f" {one['restart_s']:.1f} s"
    )
    print(
        f"stream: {one['stream_messages']:,} events, {one['stream_subjects']:,} subjects,"
        f" {one['stream_bytes_per_notification']:.0f} bytes per notification"
    )
    unique = one["unique_subjects_comparison"]
    if unique:
        growth = (unique["rss_after_mb"] - unique["rss_before_mb"]) * 1e6 / one["notifications"]
        print(
            f"the same count of bare events on a subject each: +{growth:.0f} MB per million"
            f" ({unique['subjects']:,.0f} subjects)"
        )
    if two:
        print(
            f"relaypush serve: {two['push']['accepted_per_s']:,.0f} accepted/s while delivering"
            f" (p99 {two['push']['p99_ms']:.1f} ms), all delivered {two['drained_after_s']:.0f} s"
            " after the last push"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scale-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"deployment": one, "serve": two}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
