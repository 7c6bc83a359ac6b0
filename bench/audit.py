"""Benchmark: replay and verify speed over a log of a million events, next to a bare read.

    .venv/bin/python -m bench.audit [--events 1000000] [--skip-push]

Starts its own NATS JetStream and PostgreSQL (embedded, temporary directories), fills a fresh
stream with realistic events (client registrations; pushes accepted and delivered, some retried,
duplicated or dropped) by pipelined publishes, lets the audit chainer chain it and sign a
checkpoint every 1000 events, then measures in the same run:

- a bare read of the whole stream through ``EventLog.read`` (events/s);
- ``relaypush.audit.verify`` over the same read (events/s, and as a share of the bare read);
- a full projection rebuild with ``projections.rebuild_into`` into a fresh schema (events/s);
- the push path's accepted pushes per second with and without a chainer following the log (in a
  process of its own, as in a deployment), alternating runs, so that the chainer's cost to the
  writers shows.

Aims: verify at 50% or more of the bare read, rebuild at 20,000 events/s or more, accept rate
with the chainer within 10% of the rate without. Results are printed and written as JSON to
bench/results/.
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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.loadgen import build_request, run_load
from bench.push import free_port, notify_blob, wait_healthy
from eventstore import JetStreamEventLog
from eventstore.subjects import encode_subject
from projections import rebuild_into
from relaypush.audit import Chainer, generate_signing_key, verify
from relaypush.auth.relay_signature import make_relay_signature
from relaypush.domain.events import (
    Cause,
    ClientRegistered,
    Event,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotificationDuplicate,
    NotifyMessage,
    encode_event,
)
from relaypush.domain.streams import dedup_key, subject_for
from relaypush.embedded import EmbeddedNats, EmbeddedPostgres
from relaypush.logs import configure_logging

RESULTS = Path(__file__).resolve().parent / "results"
TENANT = "0000-0000-0000-0000"
CHECKPOINT_EVERY = 1000


def realistic_events(count: int, clients: int) -> Iterator[Event]:
    """Registrations, then pushes: accepted and delivered; every 40th retried once first, every
    100th duplicated, every 250th also dropped for an unknown client."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    blob = notify_blob()
    notify = NotifyMessage(title="Bench", body="Hello")
    made = 0
    for i in range(min(clients, count)):
        made += 1
        yield ClientRegistered(
            event_id=uuid.uuid4().hex,
            occurred_at=t0 + timedelta(milliseconds=made),
            tenant_id=TENANT,
            cause=Cause(request_id=uuid.uuid4().hex),
            client_id=f"client{i:06d}",
            provider="fcm",
            token=uuid.uuid4().hex * 4,
        )
    n = 0
    while made < count:
        n += 1
        client = f"client{n % clients:06d}"
        message = uuid.uuid4().hex
        when = t0 + timedelta(milliseconds=made)
        cause = Cause(request_id=uuid.uuid4().hex, message_id=message)
        common: dict[str, Any] = {
            "tenant_id": TENANT,
            "cause": cause,
            "client_id": client,
            "message_id": message,
        }
        batch: list[Event] = [
            NotificationAccepted(
                event_id=uuid.uuid4().hex,
                occurred_at=when,
                dedup_key=dedup_key(TENANT, client, message),
                topic="4f1d2c3b",
                flags=16,
                flag_names=("notify",),
                blob=blob,
                notify=notify,
                **common,
            )
        ]
        if n % 40 == 0:
            batch.append(
                NotificationDeliveryFailed(
                    event_id=uuid.uuid4().hex,
                    occurred_at=when,
                    provider="fcm",
                    attempt=1,
                    permanent=False,
                    reason="Unavailable",
                    next_attempt_at=when + timedelta(seconds=5),
                    **common,
                )
            )
        batch.append(
            NotificationDelivered(
                event_id=uuid.uuid4().hex,
                occurred_at=when,
                provider="fcm",
                provider_id=f"projects/bench/messages/{uuid.uuid4().hex}",
                attempt=2 if n % 40 == 0 else 1,
                latency_ms=12.5,
                **common,
            )
        )
        if n % 100 == 0:
            batch.append(
                NotificationDuplicate(
                    event_id=uuid.uuid4().hex,
                    occurred_at=when,
                    dedup_key=dedup_key(TENANT, client, message),
                    **common,
                )
            )
        if n % 250 == 0:
            batch.append(
                NotificationDropped(
                    event_id=uuid.uuid4().hex,
                    occurred_at=when,
                    tenant_id=TENANT,
                    cause=cause,
                    client_id=f"gone{n}",
                    message_id=message,
                    reason="client_not_registered",
                )
            )
        for event in batch[: count - made]:
            made += 1
            yield event


async def fill(url: str, stream: str, prefix: str, count: int, window: int = 8192) -> float:
    """Publish ``count`` events to the stream (pipelined: up to ``window`` awaiting their
    acknowledgement); returns events per second."""
    nc = await nats.connect(url)
    inbox = nc.new_inbox()
    acked = 0
    failed = 0
    room = asyncio.Event()

    async def on_ack(msg: Any) -> None:
        nonlocal acked, failed
        acked += 1
        if b'"error"' in msg.data or not msg.data:
            failed += 1
        if sent - acked <= window // 2:
            room.set()

    sub = await nc.subscribe(inbox, cb=on_ack)
    sent = 0
    started = time.perf_counter()
    for event in realistic_events(count, clients=10_000):
        await nc.publish(encode_subject(prefix, subject_for(event)), encode_event(event), inbox)
        sent += 1
        if sent - acked > window:
            room.clear()
            await nc.flush()
            await room.wait()
        if sent % 100_000 == 0:
            print(f"  filled {sent:,}", file=sys.stderr)
    await nc.flush()
    while acked < sent:
        room.clear()
        async with asyncio.timeout(60):
            await room.wait()
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    if failed:
        raise SystemExit(f"{failed} publishes were refused")
    return count / elapsed


async def bare_read(log: JetStreamEventLog) -> tuple[int, float]:
    started = time.perf_counter()
    count = 0
    async for _ in log.read():
        count += 1
    return count, count / (time.perf_counter() - started)


async def push_rate(
    nats_url: str, *, chainer: bool, requests: int, concurrency: int, round_: int
) -> dict[str, Any]:
    """Accepted pushes per second from one ``relaypush api`` on a fresh stream, with or without
    an audit chainer process following that stream."""
    key = Ed25519PrivateKey.generate()
    public_hex = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    stream, prefix = f"PUSH{round_}{int(chainer)}", f"push{round_}{int(chainer)}"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")},
        "RELAYPUSH_NATS_URL": nats_url,
        "RELAYPUSH_PORT": str(port),
        "RELAYPUSH_RELAY_PUBLIC_KEY": public_hex,
        "RELAYPUSH_LOG_LEVEL": "warning",
        "RELAYPUSH_STREAM_NAME": stream,
        "RELAYPUSH_SUBJECT_PREFIX": prefix,
        "RELAYPUSH_RATE_LIMIT_PER_MINUTE": "0",
    }
    relaypush = Path(sys.executable).with_name("relaypush")
    api = subprocess.Popen([str(relaypush), "api"], env=env)
    follower: subprocess.Popen[bytes] | None = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, api)
        if chainer:
            follower = subprocess.Popen(
                [sys.executable, "-m", "bench.audit", "--chainer-only", nats_url, stream, prefix]
            )
        clients = [f"bench-{i}" for i in range(200)]
        async with httpx.AsyncClient(base_url=base) as http:
            for client in clients:
                r = await http.post(
                    "/clients", json={"client_id": client, "type": "noop", "token": client}
                )
                r.raise_for_status()
        blob = notify_blob()
        now = int(time.time())
        prepared = []
        for i in range(requests):
            body = json.dumps(
                {"id": uuid.uuid4().hex, "payload": {"topic": "ab12", "flags": 16, "blob": blob}}
            ).encode()
            sig, ts = make_relay_signature(key, now, body)
            prepared.append(
                build_request(
                    "POST",
                    f"/clients/{clients[i % len(clients)]}",
                    f"127.0.0.1:{port}",
                    body,
                    {
                        "Content-Type": "application/json",
                        "X-Ed25519-Signature": sig,
                        "X-Ed25519-Timestamp": ts,
                    },
                )
            )
        result = await run_load("127.0.0.1", port, prepared, concurrency)
        accepted = result.statuses.get(202, 0)
        return {
            "chainer": chainer,
            "round": round_,
            "accepted": accepted,
            "accepted_per_s": accepted / result.elapsed,
        }
    finally:
        if follower is not None:
            follower.terminate()
            follower.wait(timeout=15)
        api.terminate()
        api.wait(timeout=15)


async def chainer_only(url: str, stream: str, prefix: str) -> None:
    """Follow ``stream`` with a chainer until terminated (the push phase's second process)."""
    import signal

    log = await JetStreamEventLog.connect(url, stream=stream, prefix=prefix)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await Chainer(log, generate_signing_key(), every_events=CHECKPOINT_EVERY).run(stop)
    finally:
        await log.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="bare read / verify rounds")
    parser.add_argument("--skip-push", action="store_true", help="skip the accept-rate phase")
    parser.add_argument("--push-requests", type=int, default=8000)
    parser.add_argument("--push-concurrency", type=int, default=64)
    parser.add_argument("--chainer-only", nargs=3, metavar=("URL", "STREAM", "PREFIX"))
    args = parser.parse_args()
    configure_logging("console", "warning")
    if args.chainer_only:
        await chainer_only(*args.chainer_only)
        return

    result: dict[str, Any] = {"events": args.events}
    with tempfile.TemporaryDirectory(prefix="relaypush-bench-audit-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        server.start()
        postgres = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="relaypush-bench-pg-")))
        postgres.start()
        try:
            log = await JetStreamEventLog.connect(
                server.url, stream="AUDITBENCH", prefix="auditbench"
            )
            try:
                print(f"filling a fresh stream with {args.events:,} events", file=sys.stderr)
                result["fill_per_s"] = await fill(
                    server.url, "AUDITBENCH", "auditbench", args.events
                )
                if await log.last_position() != args.events:
                    raise SystemExit(f"the stream holds {await log.last_position()} events")
                key = generate_signing_key()
                started = time.perf_counter()
                await Chainer(log, key, every_events=CHECKPOINT_EVERY).catch_up()
                chained = await log.last_position()
                result["chainer_per_s"] = chained / (time.perf_counter() - started)
                result["log_events"] = chained

                # alternating rounds, so that neither a warm cache nor a busy neighbour
                # favours one side; each side's best round counts
                reads: list[float] = []
                verifies: list[float] = []
                for _ in range(args.rounds):
                    count, rate = await bare_read(log)
                    reads.append(rate)
                    started = time.perf_counter()
                    report = await verify(log.read(), [key.public_key])
                    verifies.append(report.events / (time.perf_counter() - started))
                    if not report.ok or report.events != count:
                        raise SystemExit(f"verify failed: {report.describe()}")
                result["bare_read_rounds_per_s"] = reads
                result["verify_rounds_per_s"] = verifies
                result["bare_read_per_s"] = max(reads)
                result["verify_per_s"] = max(verifies)
                result["verify_protected_upto"] = report.protected_upto
                result["verify_share_of_bare_read"] = (
                    result["verify_per_s"] / result["bare_read_per_s"]
                )

                started = time.perf_counter()
                applied = await rebuild_into(log, postgres.url, "bench_rebuild")
                result["rebuild_per_s"] = applied / (time.perf_counter() - started)
            finally:
                await log.close()

            if not args.skip_push:
                rows = []
                for round_ in range(2):
                    for with_chainer in (False, True):
                        rows.append(
                            await push_rate(
                                server.url,
                                chainer=with_chainer,
                                requests=args.push_requests,
                                concurrency=args.push_concurrency,
                                round_=round_,
                            )
                        )
                without = [r["accepted_per_s"] for r in rows if not r["chainer"]]
                with_ = [r["accepted_per_s"] for r in rows if r["chainer"]]
                result["push_rounds"] = rows
                result["push_without_chainer_per_s"] = sum(without) / len(without)
                result["push_with_chainer_per_s"] = sum(with_) / len(with_)
                result["push_with_chainer_share"] = (
                    result["push_with_chainer_per_s"] / result["push_without_chainer_per_s"]
                )
        finally:
            postgres.stop()
            server.stop()

    print(f"log: {result['log_events']:,} events (filled at {result['fill_per_s']:,.0f}/s)")
    print(
        f"chainer (catch-up, checkpoint every {CHECKPOINT_EVERY}): {result['chainer_per_s']:,.0f}/s"
    )
    print(f"bare read:  {result['bare_read_per_s']:>10,.0f} events/s (best of {args.rounds})")
    print(
        f"verify:     {result['verify_per_s']:>10,.0f} events/s "
        f"= {result['verify_share_of_bare_read']:.0%} of the bare read (aim >= 50%)"
    )
    print(f"rebuild:    {result['rebuild_per_s']:>10,.0f} events/s (aim >= 20,000)")
    if "push_with_chainer_share" in result:
        print(
            f"accepted pushes/s: {result['push_without_chainer_per_s']:,.0f} without a chainer, "
            f"{result['push_with_chainer_per_s']:,.0f} with one "
            f"= {result['push_with_chainer_share']:.0%} (aim >= 90%)"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"audit-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
