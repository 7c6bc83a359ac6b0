"""Several API processes on one port: whichever answers ``GET /metrics`` reports the requests
all of them served (prometheus_client's multiprocess mode), not its own share."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.processes import RELAYPUSH, free_port, wait_until

pytestmark = pytest.mark.integration

HEALTH_COUNT = re.compile(
    r'^relaypush_http_requests_total\{method="GET",route="/health",status="200"\} (\S+)$', re.M
)


@pytest.fixture(name="api")
def fx_api(nats_url: str, unique_name: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``relaypush api`` with two processes; yields its URL and its temporary directory."""
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")}
    env |= {
        "RELAYPUSH_NATS_URL": nats_url,
        "RELAYPUSH_STREAM_NAME": unique_name.upper(),
        "RELAYPUSH_SUBJECT_PREFIX": unique_name,
        "RELAYPUSH_PORT": str(port),
        "RELAYPUSH_API_WORKERS": "2",
        "RELAYPUSH_DATA_DIR": str(tmp_path / "data"),
        "RELAYPUSH_LOG_LEVEL": "warning",
        "TMPDIR": str(tmp),  # where the processes keep their shared metrics
    }
    log_path = tmp_path / "api.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([RELAYPUSH, "api"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(log_path.read_text()[-3000:])
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, 90, "relaypush api to answer /health")
        yield url, tmp
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_every_worker_reports_the_requests_of_all(api: tuple[str, Path]) -> None:
    url, tmp = api
    sent = 1  # the fixture saw one 200 from /health

    def both_processes_answered() -> bool:
        nonlocal sent
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # a new connection
        sent += 1
        pids = {p.stem.rsplit("_", 1)[-1] for p in tmp.glob("relaypush-metrics-*/*.db")}
        return len(pids) >= 2

    wait_until(both_processes_answered, 60, "both API processes to serve a request")
    for _ in range(10):
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        sent += 1
    for _ in range(20):  # each scrape on a new connection, to either process
        scraped = httpx.get(f"{url}/metrics", timeout=5)
        assert scraped.status_code == 200
        counts = HEALTH_COUNT.findall(scraped.text)
        assert [float(c) for c in counts] == [float(sent)]
