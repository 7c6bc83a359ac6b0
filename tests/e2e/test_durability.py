"""``kill -9`` of ``relaypush serve`` loses nothing it acknowledged.

Runs the real command with its embedded NATS and PostgreSQL on a temporary data dir, registers
clients and pushes notifications, kills the server with SIGKILL, starts it again on the same data
dir and checks that every client and every accepted notification is still there and that an old
message id is still a duplicate.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.processes import RELAYPUSH, free_port, wait_until

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")}
        env |= {
            "RELAYPUSH_DATA_DIR": str(self.data_dir),
            "RELAYPUSH_PORT": str(self.port),
            "RELAYPUSH_LOG_LEVEL": "warning",
            # sends unacknowledged at the kill come back after 3 x this
            "RELAYPUSH_SEND_TIMEOUT": "2",
        }
        with (self.data_dir / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen([RELAYPUSH, "serve"], env=env, stdout=log, stderr=log)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError((self.data_dir / "serve.log").read_text()[-3000:])
            try:
                return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 90, "relaypush serve to answer /health")

    def runtime(self) -> dict[str, str]:
        info: dict[str, str] = json.loads((self.data_dir / "runtime.json").read_text())
        return info

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        pid_file = self.data_dir / "postgres" / "pgdata" / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        wait_until(lambda: not alive(pid), 30, "embedded PostgreSQL to exit with its parent")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture(name="data_dir")
def fx_data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relaypush-kill9-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def push_body(message_id: str) -> dict[str, object]:
    blob = base64.b64encode(json.dumps({"title": "t", "body": message_id}).encode()).decode()
    return {"id": message_id, "payload": {"topic": "ab", "flags": 16, "blob": blob}}


def test_kill_9_and_restart_keeps_everything_accepted(data_dir: Path) -> None:
    server = Server(data_dir)
    server.start()
    try:
        clients = [f"wallet-{i}" for i in range(5)]
        for client in clients:
            r = httpx.post(
                f"{server.base}/clients",
                json={"client_id": client, "type": "noop", "token": client},
            )
            assert r.status_code == 200, r.text
        accepted = []
        for i in range(20):
            client = clients[i % len(clients)]
            r = httpx.post(f"{server.base}/clients/{client}", json=push_body(f"m-{i}"))
            assert r.status_code == 202, r.text
            accepted.append((client, f"m-{i}"))
        server.kill9()

        server.port = free_port()
        server.start()
        database_url = server.runtime()["database_url"]

        def sent() -> set[tuple[str, str]]:
            with psycopg.connect(database_url) as conn:
                rows = conn.execute(
                    "SELECT client_id, message_id FROM relaypush.messages"
                    " WHERE status = 'delivered'"
                ).fetchall()
            return {(r[0], r[1]) for r in rows}

        try:
            wait_until(lambda: sent() == set(accepted), 60, "every notification delivered")
        except AssertionError:
            missing = set(accepted) - sent()
            log = (data_dir / "serve.log").read_text()[-4000:]
            raise AssertionError(f"not delivered and projected: {missing}\n{log}") from None
        with psycopg.connect(database_url) as conn:
            devices = conn.execute(
                "SELECT client_id FROM relaypush.devices WHERE active ORDER BY client_id"
            ).fetchall()
        assert [d[0] for d in devices] == clients
        r = httpx.post(f"{server.base}/clients/wallet-0", json=push_body("m-0"))
        assert r.status_code == 200, "an id accepted before the kill must still be a duplicate"
        r = httpx.post(f"{server.base}/clients/wallet-0", json=push_body("after-restart"))
        assert r.status_code == 202
    finally:
        server.stop()
    assert not (data_dir / "runtime.json").exists(), "a clean stop removes runtime.json"
