"""Benchmark: signed ``POST /clients/{id}`` pushes at rising concurrency, next to bare JetStream.

    .venv/bin/python -m bench.push [--requests 6000] [--concurrency 8,16,32,64,128]

Starts its own NATS JetStream and PostgreSQL (embedded, free ports, temporary stores), a
``relaypush projector`` (the deduplication index the API reads is its ``messages`` table) and
``relaypush api`` (``--api-workers`` processes), registers noop clients, then for each
concurrency sends pre-signed pushes with unique ids over keep-alive connections and reports
accepted pushes per second with p50/p99 latency, and the CPU the API processes and nats-server
spent per accepted push.
In the same run it measures the ceiling: bare JetStream publishes per second from one Python
process (nats-py, same stream settings). Results are printed and written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js.api import StorageType, StreamConfig

from bench.loadgen import build_request, percentile, run_load
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.embedded import EmbeddedNats, EmbeddedPostgres

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bare_publish_rate(url: str, count: int, window: int = 256) -> tuple[float, float]:
    """(sequential, pipelined) JetStream publishes per second from this one process."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="BAREBENCH",
            subjects=["barebench.>"],
            storage=StorageType.FILE,
            duplicate_window=300.0,
        )
    )
    body = b'{"type":"notification.accepted","payload":"' + b"x" * 300 + b'"}'
    started = time.perf_counter()
    for i in range(count // 4):
        await js.publish(f"barebench.s.{i}", body, headers={"Nats-Msg-Id": f"s{i}"})
    sequential = (count // 4) / (time.perf_counter() - started)
    started = time.perf_counter()
    for base in range(0, count, window):
        await asyncio.gather(
            *(
                js.publish(f"barebench.p.{i}", body, headers={"Nats-Msg-Id": f"p{i}"})
                for i in range(base, min(count, base + window))
            )
        )
    pipelined = count / (time.perf_counter() - started)
    await js.delete_stream("BAREBENCH")
    await nc.close()
    return sequential, pipelined


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"relaypush api exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("relaypush api did not become healthy")


def _cpu(pid: int) -> float:
    """CPU seconds (user and system) ``pid`` has used; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _pid_listening(url: str) -> int:
    """The pid of the nats-server whose client port is ``url``'s."""
    port = url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[0].endswith(b"nats-server") and port.encode() in cmdline:
                return int(entry.name)
    raise RuntimeError(f"no nats-server on {url}")


def notify_blob() -> str:
    return base64.b64encode(json.dumps({"title": "Bench", "body": "Hello"}).encode()).decode()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000, help="pushes per concurrency step")
    parser.add_argument("--concurrency", default="8,16,32,64,128")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--bare", type=int, default=20000, help="bare publishes for the ceiling")
    parser.add_argument("--api-workers", type=int, default=2, help="RELAYPUSH_API_WORKERS")
    args = parser.parse_args()
    steps = [int(c) for c in args.concurrency.split(",")]

    key = Ed25519PrivateKey.generate()
    public_hex = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    with tempfile.TemporaryDirectory(prefix="relaypush-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        server.start()
        postgres = EmbeddedPostgres(Path(tmp) / "postgres")
        postgres.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            seq_rate, bare_rate = await bare_publish_rate(server.url, args.bare)
            port = free_port()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")},
                "RELAYPUSH_NATS_URL": server.url,
                "RELAYPUSH_DATABASE_URL": postgres.url,
                "RELAYPUSH_DATA_DIR": str(Path(tmp) / "data"),
                "RELAYPUSH_PORT": str(port),
                "RELAYPUSH_RELAY_PUBLIC_KEY": public_hex,
                "RELAYPUSH_LOG_LEVEL": "warning",
                "RELAYPUSH_STREAM_NAME": "BENCH",
                "RELAYPUSH_SUBJECT_PREFIX": "bench",
                "RELAYPUSH_RATE_LIMIT_PER_MINUTE": "0",
                "RELAYPUSH_API_WORKERS": str(args.api_workers),
            }
            relaypush = Path(sys.executable).with_name("relaypush")
            procs.append(subprocess.Popen([str(relaypush), "projector"], env=env))
            proc = subprocess.Popen([str(relaypush), "api"], env=env)
            procs.append(proc)
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, proc)
            clients = [f"bench-{i}" for i in range(args.clients)]
            async with httpx.AsyncClient(base_url=base) as http:
                for client in clients:
                    r = await http.post(
                        "/clients", json={"client_id": client, "type": "noop", "token": client}
                    )
                    r.raise_for_status()
            nats_pid = _pid_listening(server.url)
            rows: list[dict[str, Any]] = []
            blob = notify_blob()
            for concurrency in steps:
                now = int(time.time())
                requests = []
                for i in range(args.requests):
                    client = clients[i % len(clients)]
                    body = json.dumps(
                        {
                            "id": uuid.uuid4().hex,
                            "payload": {"topic": "ab12", "flags": 16, "blob": blob},
                        }
                    ).encode()
                    sig, ts = make_relay_signature(key, now, body)
                    requests.append(
                        build_request(
                            "POST",
                            f"/clients/{client}",
                            f"127.0.0.1:{port}",
                            body,
                            {
                                "Content-Type": "application/json",
                                "X-Ed25519-Signature": sig,
                                "X-Ed25519-Timestamp": ts,
                            },
                        )
                    )
                api_pids = [proc.pid, *_children(proc.pid)]
                api_before = sum(_cpu(p) for p in api_pids)
                nats_before = _cpu(nats_pid)
                result = await run_load("127.0.0.1", port, requests, concurrency)
                accepted = result.statuses.get(202, 0)
                api_cpu = sum(_cpu(p) for p in api_pids) - api_before
                nats_cpu = _cpu(nats_pid) - nats_before
                rows.append(
                    {
                        "concurrency": concurrency,
                        "requests": result.sent,
                        "accepted": accepted,
                        "statuses": result.statuses,
                        "accepted_per_s": accepted / result.elapsed,
                        "p50_ms": percentile(result.latencies, 0.50) * 1000,
                        "p99_ms": percentile(result.latencies, 0.99) * 1000,
                        "api_cpu_ms_per_push": api_cpu / max(accepted, 1) * 1000,
                        "nats_cpu_ms_per_push": nats_cpu / max(accepted, 1) * 1000,
                    }
                )
        finally:
            for child in procs:
                child.terminate()
            for child in procs:
                child.wait(timeout=15)
            server.stop()
            postgres.stop()

    print(
        f"bare JetStream publishes/s from one Python process: {bare_rate:,.0f} pipelined, "
        f"{seq_rate:,.0f} sequential"
    )
    print(
        f"{'conc':>5} {'accepted/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'of bare':>8}"
        f" {'api ms/push':>12} {'nats ms/push':>13}  statuses"
    )
    for row in rows:
        print(
            f"{row['concurrency']:>5} {row['accepted_per_s']:>11,.0f} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['accepted_per_s'] / bare_rate:>8.0%}"
            f" {row['api_cpu_ms_per_push']:>12.3f} {row['nats_cpu_ms_per_push']:>13.3f}"
            f"  {row['statuses']}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"push-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"bare_publish_per_s": bare_rate, "bare_sequential_per_s": seq_rate, "steps": rows},
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
