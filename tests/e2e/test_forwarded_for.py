"""``relaypush api`` as started for real: X-Forwarded-For is believed per RELAYPUSH_TRUSTED_PROXIES.

uvicorn has a forwarded-for handling of its own, on by default for 127.0.0.1: it would replace
the peer with whatever the header says before relaypush sees the request, so a client on the same
host could pick its rate-limit bucket at will. The command runs with the session's NATS, a
stream of its own and a rate limit of one request a minute; the test counts which requests share
a bucket.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import nats
import pytest

pytestmark = pytest.mark.integration

RELAYPUSH = str(Path(sys.executable).with_name("relaypush"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def api(
    nats_url: str, name: str, tmp_path: Path, **settings: str
) -> AsyncIterator[Callable[[str], Awaitable[httpx.Response]]]:
    """``relaypush api`` on a free port; yields a function that unregisters a client with the
    given X-Forwarded-For and returns the response."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYPUSH_")}
    env |= {
        "RELAYPUSH_NATS_URL": nats_url,
        "RELAYPUSH_STREAM_NAME": name.upper(),
        "RELAYPUSH_SUBJECT_PREFIX": name,
        "RELAYPUSH_PORT": str(port),
        "RELAYPUSH_DATA_DIR": str(tmp_path),
        "RELAYPUSH_RATE_LIMIT_PER_MINUTE": "1",
        "RELAYPUSH_LOG_LEVEL": "warning",
        **{f"RELAYPUSH_{key.upper()}": value for key, value in settings.items()},
    }
    log_path = tmp_path / f"api-{name}.log"
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            RELAYPUSH, "api", env=env, stdout=log, stderr=log
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(600):
                if proc.returncode is not None:
                    raise AssertionError(log_path.read_text()[-3000:])
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("relaypush api did not answer /health")

            async def unregister(forwarded_for: str) -> httpx.Response:
                return await http.delete("/clients/w", headers={"X-Forwarded-For": forwarded_for})

            yield unregister
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(name.upper())
        finally:
            await nc.close()


async def test_without_trusted_proxies_forwarded_for_is_ignored(
    nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    async with api(nats_url, unique_name, tmp_path) as unregister:
        assert (await unregister("198.51.100.1")).status_code == 200
        # another claimed address from the same peer: the same bucket, now empty
        assert (await unregister("198.51.100.2")).status_code == 429


async def test_a_trusted_proxy_forwards_the_client_address(
    nats_url: str, unique_name: str, tmp_path: Path
) -> None:
    async with api(nats_url, unique_name, tmp_path, trusted_proxies="127.0.0.1") as unregister:
        assert (await unregister("198.51.100.1")).status_code == 200
        assert (await unregister("198.51.100.2")).status_code == 200
        assert (await unregister("203.0.113.5, 198.51.100.1")).status_code == 429
