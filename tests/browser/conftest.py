"""Headless Chromium for browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Shared by every test under ``tests/browser``. Playwright for Python comes from the dev
dependencies in ``pyproject.toml``; the browser is the distribution's package, which
``.ci/bootstrap`` installs (``apt-get install chromium``) when it is missing, so nothing is
downloaded at test time (``playwright install`` is never run, and could not be here).

Fixtures:

- ``chromium``: a Playwright ``BrowserContext`` of a fresh Chromium, headless, on a new empty
  ``--user-data-dir`` of the test's own (a persistent context, so the profile is the test's and
  is removed with its ``tmp_path``), with the flags that keep it off the network it cannot
  reach here: ``--no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync`` (Playwright adds
  ``--headless``). Pages talk only to servers the test starts on 127.0.0.1.
- ``serve_app``: serves a litestar app over real HTTP on a free loopback port for the duration
  of an ``async with`` (a browser cannot reach an app run in-process the way ``tests/asgi.py``
  runs one), and yields its base URL.

Pages are secure contexts on ``http://127.0.0.1``, so service workers and the Push API exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import pytest_asyncio
import uvicorn
from litestar import Litestar
from playwright.async_api import BrowserContext, async_playwright

CHROMIUM: Path = Path("/usr/bin/chromium")
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

_INSTALLED = CHROMIUM.exists()

ServeApp = Callable[[Litestar], AbstractAsyncContextManager[str]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.path):
            item.add_marker(pytest.mark.browser)


@pytest_asyncio.fixture(name="chromium")
async def fx_chromium(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    assert _INSTALLED, f"{CHROMIUM} is missing: run .ci/bootstrap (apt-get install chromium)"
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_FLAGS),
        )
        try:
            yield context
        finally:
            await context.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield  # the test run owns the signals


@contextlib.asynccontextmanager
async def _serve(app: Litestar) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(name="serve_app")
def fx_serve_app() -> ServeApp:
    return _serve
