"""Client CPU per send of candidate APNs and FCM clients, each measured in a process of its own.

    .venv/bin/python -m bench.delivery --provider-clients [--sends 20000] [--warmup 2000]
        [--in-flight 128] [--rounds 2] [--node-dir DIR] [--client-loop uvloop|asyncio]

Starts stand-ins, each in a process of its own: the Python APNs stand-in (token auth, every JWT
checked), the Python FCM stand-in (OAuth through its service-account file) and, with
``--node-dir`` (a folder set up from ``shared/tools/peer-apns`` with ``npm install``), the lean
Node APNs stand-in, which costs a fraction of the Python one's CPU per answer, so that a client
measured against it is measured alone. Then, in turn and ``--rounds`` times, each candidate runs
in a fresh client process (``python -m bench.provider_clients --client-run ...``): it opens its
connections and warms up with ``--warmup`` sends, then times ``--sends`` sends with
``--in-flight`` at once, each a distinct notification to a distinct device as the dispatcher
sends them, and reports its own CPU (``time.process_time``) and the stand-in's (``/proc``) over
the timed part. The candidates:

- APNs ``aioapns``: relaypush's APNs client before its own HTTP/2 client
  (``bench/aioapns_client.py``: aioapns's pool and protocol, our exchange on h2);
- ``h2-library``: ``ApnsProvider`` / ``FcmProvider`` on a pool built on the h2 library
  (``bench/h2_client.py``), h2's header validation off and our own header encoder;
- ``httpx-h1`` / ``httpx-h2``: httpx with HTTP/1.1 (one connection per send in flight) or
  HTTP/2 (as ``FcmProvider`` sent before); for APNs a bench-side client with the same headers,
  body and outcome table (Apple speaks only HTTP/2: ``httpx-h1`` runs against the Python
  stand-in only), for FCM ``FcmProvider(http2=False)`` and a bench-side HTTP/2 client;
- ``relaypush``: :class:`~relaypush.delivery.apns.ApnsProvider` and
  :class:`~relaypush.delivery.fcm.FcmProvider` on relaypush's own HTTP/2 client
  (:mod:`relaypush.delivery.http2`): what relaypush runs;
- ``node-apn``: the Node.js peer (``node_client.js --mode unique``), against both APNs stand-ins.

Every candidate builds the request from the accepted notification and sorts the answer into an
outcome as relaypush does. Results are printed and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.oauth2 import service_account

from bench.delivery import RESULTS, cpu_seconds, drive, machine_ticks, start_stand_in
from relaypush.delivery.apns import ApnsProvider
from relaypush.delivery.apns_auth import ProviderToken
from relaypush.delivery.apns_outcomes import outcome_for
from relaypush.delivery.fcm import FCM_SCOPE, FcmProvider, RefreshToken, interpret
from relaypush.delivery.google_oauth import ServiceAccountTokens, TokenUnavailable
from relaypush.delivery.outcomes import Delivered, Outcome, Retry, Target
from relaypush.domain.events import NotificationAccepted, NotifyMessage
from relaypush.domain.provider_payload import apns_body, apns_id, fcm_message
from relaypush.logs import configure_logging, fingerprint
from relaypush.metrics import Registry
from relaypush.testing.tls import issue_server_certificate

TOPIC: Final = "com.example.bench"
KEY_ID: Final = "BENCHKEY01"
TEAM_ID: Final = "BENCHTEAM1"
APNS_CANDIDATES: Final = ("aioapns", "h2-library", "httpx-h1", "httpx-h2", "relaypush")
FCM_CANDIDATES: Final = ("h2-library", "httpx-h1", "httpx-h2", "relaypush")


class _Sender(Protocol):
    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome: ...

    async def close(self) -> None: ...


# -- the httpx candidates, doing what a provider does around the request ----------------------


class _ErrorBody(msgspec.Struct):
    reason: str | None = None


class HttpxApns:
    """APNs through httpx: the same headers, body and outcome table as ``ApnsProvider``."""

    def __init__(
        self, token: ProviderToken, url: str, ca_file: Path, *, http2: bool, connections: int
    ) -> None:
        self._token = token
        self._client = httpx.AsyncClient(
            base_url=url,
            http2=http2,
            verify=ssl.create_default_context(cafile=str(ca_file)),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(10.0),
        )

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        sent_id = apns_id(target.tenant_id, target.client_id, notification.message_id)
        headers = {
            "apns-id": sent_id,
            "apns-topic": TOPIC,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "authorization": self._token.header(),
        }
        try:
            response = await self._client.post(
                f"/3/device/{quote(target.token, safe='')}",
                content=apns_body(notification),
                headers=headers,
            )
        except httpx.HTTPError as exc:
            return Retry(f"APNs connection failed: {exc!r}")
        reason = None
        if response.content:
            with contextlib.suppress(msgspec.DecodeError):
                reason = msgspec.json.decode(response.content, type=_ErrorBody).reason
        return outcome_for(
            response.status_code,
            reason,
            apns_id=response.headers.get("apns-id") or sent_id,
            after=None,
            token=fingerprint(target.token),
            tenant_id=target.tenant_id,
            endpoint="bench",
        )

    async def close(self) -> None:
        await self._client.aclose()


class HttpxFcm:
    """FCM through httpx HTTP/2, as ``FcmProvider`` sent before it had its own HTTP/2 client."""

    def __init__(self, info: dict[str, Any], url: str, ca_file: Path) -> None:
        verify = ssl.create_default_context(cafile=str(ca_file))
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[FCM_SCOPE], additional_claims={"aud": info["token_uri"]}
        )
        self._tokens = ServiceAccountTokens(credentials, verify=verify, metrics=Registry())
        self._path = f"/v1/projects/{quote(info['project_id'], safe='')}/messages:send"
        self._client = httpx.AsyncClient(
            base_url=url,
            http2=True,
            verify=verify,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            timeout=httpx.Timeout(10.0),
            headers={"content-type": "application/json; charset=UTF-8"},
        )

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        body = msgspec.json.encode(fcm_message(notification, target.token))
        try:
            bearer = await self._tokens.get()
            response = await self._client.post(
                self._path, content=body, headers={"authorization": f"Bearer {bearer}"}
            )
        except TokenUnavailable as exc:
            return exc.outcome
        except httpx.HTTPError as exc:
            return Retry(f"connection: {exc!r}")
        outcome = interpret(
            response.status_code, response.headers, response.content, now=datetime.now(UTC)
        )
        return Retry(outcome.reason) if isinstance(outcome, RefreshToken) else outcome

    async def close(self) -> None:
        await self._client.aclose()
        self._tokens.close()


# -- one client process ------------------------------------------------------------------------


def _notification(i: int, tag: str, *, fcm: bool) -> tuple[NotificationAccepted, Target]:
    """A distinct accepted notification (cleartext Notify) and its distinct device."""
    message_id = f"{tag}-{i}-{uuid.uuid4().hex[:8]}"
    client = f"bench-{i}"
    blob = base64.b64encode(json.dumps({"title": "Bench", "body": message_id}).encode()).decode()
    notification = NotificationAccepted(
        event_id=uuid.uuid4().hex,
        occurred_at=datetime.now(UTC),
        tenant_id="bench",
        client_id=client,
        message_id=message_id,
        dedup_key=message_id,
        topic="ab12",
        flags=16,
        blob=blob,
        notify=NotifyMessage(title="Bench", body=message_id),
    )
    if fcm:
        return notification, Target("bench", client, "fcm", f"fcm-token-{i}")
    return notification, Target("bench", client, "apns", os.urandom(32).hex())


def _make_sender(args: argparse.Namespace) -> _Sender:
    ca_file = Path(args.ca_file)
    candidate = args.candidate
    sender: ApnsProvider | FcmProvider
    if args.provider == "apns":
        key_id, team_id, key_path = args.key.split(":", 2)
        token = ProviderToken.from_pem(Path(key_path).read_bytes(), key_id, team_id)
        if candidate == "aioapns":
            from bench.aioapns_client import AioapnsProvider

            return AioapnsProvider(
                token, topic=TOPIC, url=args.url, ca_file=ca_file, metrics=Registry()
            )
        if candidate.startswith("httpx"):
            http2 = candidate == "httpx-h2"
            connections = 4 if http2 else args.h1_connections
            return HttpxApns(token, args.url, ca_file, http2=http2, connections=connections)
        sender = ApnsProvider(token, topic=TOPIC, url=args.url, ca_file=ca_file, metrics=Registry())
    else:
        info = json.loads(Path(args.credentials_file).read_text())
        if candidate == "httpx-h2":
            return HttpxFcm(info, args.url, ca_file)
        sender = FcmProvider.from_service_account(
            info,
            base_url=args.url,
            verify=ca_file,
            http2=candidate != "httpx-h1",
            max_connections=args.h1_connections if candidate == "httpx-h1" else 4,
            metrics=Registry(),
        )
    if candidate == "h2-library":
        from bench.h2_client import use_h2_library

        use_h2_library(sender, str(ca_file))
    return sender


async def _client_run(args: argparse.Namespace) -> None:
    sender = _make_sender(args)
    fcm = args.provider == "fcm"
    warm = [_notification(i, "warm", fcm=fcm) for i in range(args.warmup)]
    timed = [_notification(i, "timed", fcm=fcm) for i in range(args.sends)]
    failures: list[str] = []

    def sending(
        batch: Sequence[tuple[NotificationAccepted, Target]],
    ) -> Callable[[int], Awaitable[bool]]:
        async def send(i: int) -> bool:
            outcome = await sender.send(*batch[i])
            if not isinstance(outcome, Delivered) and len(failures) < 3:
                failures.append(repr(outcome))
            return isinstance(outcome, Delivered)

        return send

    try:
        warm_ok = await drive(len(warm), args.in_flight, sending(warm))
        server_before, busy_before = cpu_seconds(args.server_pid), machine_ticks()
        cpu_before, started = time.process_time(), time.perf_counter()
        ok = await drive(len(timed), args.in_flight, sending(timed))
        elapsed = time.perf_counter() - started
        cpu_client = time.process_time() - cpu_before
        server, busy_after = cpu_seconds(args.server_pid) - server_before, machine_ticks()
    finally:
        await sender.close()
    busy, _, total = (a - b for a, b in zip(busy_after, busy_before, strict=True))
    result = {
        "warmup_ok": warm_ok,
        "ok": ok,
        "failed": len(timed) - ok,
        "failures": failures,
        "elapsed_s": elapsed,
        "cpu_client_s": cpu_client,
        "cpu_server_s": server,
        "machine_busy": busy / total if total else 0.0,
    }
    print(json.dumps(result), flush=True)


# -- the orchestration -------------------------------------------------------------------------


@dataclass(slots=True)
class Measurement:
    provider: str
    stand_in: str
    candidate: str
    round: int
    sends: int
    ok: int
    elapsed_s: float
    cpu_client_s: float
    cpu_server_s: float
    machine_busy: float
    failures: list[str]

    @property
    def client_ms(self) -> float:
        return self.cpu_client_s * 1000 / self.sends

    @property
    def server_ms(self) -> float:
        return self.cpu_server_s * 1000 / self.sends

    @property
    def per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


@dataclass(slots=True)
class _NodeStandIn:
    proc: subprocess.Popen[bytes]
    port: int
    ca_file: Path


def _start_node_stand_in(node_dir: Path, tmp: Path) -> _NodeStandIn:
    (tmp / "node-tls").mkdir()
    files = issue_server_certificate(tmp / "node-tls", "127.0.0.1")
    command = ["node", str(node_dir / "node_standin.js"), "--cert", str(files.cert_file)]
    command += ["--key", str(files.key_file), "--counts", str(tmp / "node-counts.json")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    port = 0
    for line in iter(proc.stdout.readline, b""):
        key, _, value = line.decode().strip().partition(" ")
        if key == "port":
            port = int(value)
        if key == "ready":
            return _NodeStandIn(proc, port, files.ca_file)
    raise SystemExit(f"the Node stand-in exited with {proc.wait()}")


async def _run_client(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, env=env)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"client {command[:6]} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _write_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass(frozen=True, slots=True)
class _Target:
    """A stand-in to measure clients against."""

    provider: str
    stand_in: str
    url: str
    ca_file: Path
    pid: int
    candidates: Sequence[str]


def run(args: argparse.Namespace) -> None:
    """Measure every candidate as ``args`` say (the ``--provider-clients`` options)."""
    node_dir = Path(args.node_dir).resolve() if args.node_dir else None
    if node_dir is not None and shutil.which("node") is None:
        raise SystemExit("--node-dir needs node on PATH")
    asyncio.run(main(args, node_dir))


async def main(args: argparse.Namespace, node_dir: Path | None) -> None:
    measurements: list[Measurement] = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="relaypush-clients-") as tmp_name:
        tmp = Path(tmp_name)
        key_file = tmp / "AuthKey_BENCH.p8"
        _write_key(key_file)
        credentials_file = tmp / "fcm-service-account.json"
        common = ["--sends", str(args.sends), "--warmup", str(args.warmup)]
        common += ["--in-flight", str(args.in_flight), "--client-loop", args.client_loop]
        common += ["--h1-connections", str(args.h1_connections)]
        common += ["--key", f"{KEY_ID}:{TEAM_ID}:{key_file}"]
        common += ["--credentials-file", str(credentials_file)]
        apns = await start_stand_in("apns", tmp, "--key", f"{KEY_ID}:{TEAM_ID}:{key_file}")
        fcm = await start_stand_in("fcm", tmp, "--credentials-file", str(credentials_file))
        node = _start_node_stand_in(node_dir, tmp) if node_dir is not None else None
        peer = ["node-apn"] if node_dir is not None else []
        targets = [
            _Target("apns", "python", apns.url, apns.ca_file, apns.proc.pid, APNS_CANDIDATES),
            _Target("fcm", "python", fcm.url, fcm.ca_file, fcm.proc.pid, FCM_CANDIDATES),
        ]
        targets[0] = dataclasses.replace(targets[0], candidates=[*APNS_CANDIDATES, *peer])
        if node is not None:
            http2_only = [c for c in APNS_CANDIDATES if c != "httpx-h1"] + peer
            url = f"https://127.0.0.1:{node.port}"
            targets.insert(1, _Target("apns", "node", url, node.ca_file, node.proc.pid, http2_only))
        try:
            for number in range(1, args.rounds + 1):
                for target in targets:
                    for candidate in target.candidates:
                        if args.only and candidate not in args.only.split(","):
                            continue
                        print(
                            f"round {number}: {target.provider} against the {target.stand_in} "
                            f"stand-in: {candidate} ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        if candidate == "node-apn":
                            assert node_dir is not None
                            result = await _node_client(args, node_dir, target, key_file)
                        else:
                            command = [sys.executable, "-m", "bench.provider_clients"]
                            command += ["--client-run", "--provider", target.provider]
                            command += ["--candidate", candidate, "--url", target.url]
                            command += ["--ca-file", str(target.ca_file)]
                            command += ["--server-pid", str(target.pid), *common]
                            result = await _run_client(command)
                        measurements.append(
                            Measurement(
                                provider=target.provider,
                                stand_in=target.stand_in,
                                candidate=candidate,
                                round=number,
                                sends=args.sends,
                                ok=result["ok"],
                                elapsed_s=result["elapsed_s"],
                                cpu_client_s=result["cpu_client_s"],
                                cpu_server_s=result["cpu_server_s"],
                                machine_busy=result.get("machine_busy", 0.0),
                                failures=result.get("failures", []),
                            )
                        )
        finally:
            apns.stop()
            fcm.stop()
            if node is not None:
                node.proc.send_signal(signal.SIGTERM)
                node.proc.wait(timeout=30)
    report(args, measurements, stamp)


async def _node_client(
    args: argparse.Namespace, node_dir: Path, target: _Target, key_file: Path
) -> dict[str, Any]:
    command = ["node", str(node_dir / "node_client.js"), "--mode", "unique"]
    command += ["--port", target.url.rsplit(":", 1)[1], "--ca", str(target.ca_file)]
    command += ["--key-file", str(key_file), "--key-id", KEY_ID, "--team-id", TEAM_ID]
    command += ["--topic", TOPIC, "--count", str(args.sends), "--warmup", str(args.warmup)]
    command += ["--chunk", str(args.in_flight), "--server-pid", str(target.pid)]
    command += ["--clk-tck", str(os.sysconf("SC_CLK_TCK"))]
    env = {**os.environ, "NODE_PATH": str(node_dir / "node_modules")}
    result = await _run_client(command, env)
    busy, total = result.get("machine_busy_ticks", 0), result.get("machine_total_ticks", 0)
    result["machine_busy"] = busy / total if total else 0.0
    return result


def report(args: argparse.Namespace, measurements: Sequence[Measurement], stamp: str) -> None:
    print(
        f"\nprovider clients: {args.sends} sends timed after {args.warmup} of warm-up, "
        f"{args.in_flight} in flight, client loop {args.client_loop} (node-apn: Node.js), "
        f"{args.rounds} round(s); CPU milliseconds per send of the client process and of the "
        "stand-in process, medians over the rounds"
    )
    head = (
        f"{'provider':<8} {'stand-in':<8} {'client':<10} {'client ms':>9} {'stand-in ms':>11} "
        f"{'sends/s':>8} {'failed':>6} {'machine':>7}"
    )
    print(head)
    keys = list(dict.fromkeys((m.provider, m.stand_in, m.candidate) for m in measurements))
    rows = []
    for key in keys:
        provider, stand_in, candidate = key
        mine = [
            m
            for m in measurements
            if (m.provider, m.stand_in, m.candidate) == (provider, stand_in, candidate)
        ]
        row = {
            "provider": provider,
            "stand_in": stand_in,
            "client": candidate,
            "client_ms_per_send": statistics.median(m.client_ms for m in mine),
            "client_ms_per_send_rounds": [m.client_ms for m in mine],
            "stand_in_ms_per_send": statistics.median(m.server_ms for m in mine),
            "sends_per_s": statistics.median(m.per_s for m in mine),
            "failed": sum(m.sends - m.ok for m in mine),
            "failures": [f for m in mine for f in m.failures][:3],
            "machine_busy": statistics.median(m.machine_busy for m in mine),
        }
        rows.append(row)
        print(
            f"{provider:<8} {stand_in:<8} {candidate:<10} {row['client_ms_per_send']:>9.3f} "
            f"{row['stand_in_ms_per_send']:>11.3f} {row['sends_per_s']:>8,.0f} "
            f"{row['failed']:>6} {row['machine_busy']:>7.0%}"
        )
        if row["failures"]:
            print(f"  failures: {row['failures']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"provider-clients-{stamp}.json"
    document = {
        "options": {k: v for k, v in vars(args).items() if v is not None},
        "rows": rows,
        "measurements": [
            {
                "provider": m.provider,
                "stand_in": m.stand_in,
                "client": m.candidate,
                "round": m.round,
                "sends": m.sends,
                "ok": m.ok,
                "elapsed_s": m.elapsed_s,
                "cpu_client_s": m.cpu_client_s,
                "cpu_stand_in_s": m.cpu_server_s,
                "machine_busy": m.machine_busy,
            }
            for m in measurements
        ],
    }
    out.write_text(json.dumps(document, indent=2))
    print(f"written to {out}")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options of ``--provider-clients`` (shared with the client processes)."""
    parser.add_argument("--sends", type=int, default=20000, help="timed sends per client run")
    parser.add_argument("--warmup", type=int, default=2000, help="untimed sends first")
    parser.add_argument("--in-flight", type=int, default=128, help="sends in flight")
    parser.add_argument("--rounds", type=int, default=2, help="run every client this many times")
    parser.add_argument("--only", help="measure only these clients (comma-separated names)")
    parser.add_argument(
        "--h1-connections", type=int, default=32, help="connections of the HTTP/1.1 clients"
    )
    parser.add_argument("--node-dir", help="peer-apns folder with node_modules (node-apn)")
    parser.add_argument("--client-loop", choices=["uvloop", "asyncio"], default="uvloop")


def _entry() -> None:
    """``python -m bench.provider_clients --client-run ...``: one client process."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--client-run", action="store_true")
    for name in ("provider", "candidate", "url", "ca-file", "key", "credentials-file"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args()
    configure_logging("console", "warning")
    if not args.client_run:
        run(args)
    elif args.client_loop == "uvloop":
        import uvloop

        uvloop.run(_client_run(args))
    else:
        asyncio.run(_client_run(args))


if __name__ == "__main__":
    _entry()
