"""Session-wide servers: one NATS (JetStream) and one PostgreSQL for the whole test run.

With ``RELAYPUSH_TEST_NATS_URL`` / ``RELAYPUSH_TEST_DATABASE_URL`` set, the tests use those
servers; otherwise the session starts its own (``relaypush.embedded``) on free loopback ports and
stops them at the end. Tests isolate themselves by stream, subject prefix and schema names
(``unique_name``), never by starting more processes.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaypush.embedded import EmbeddedNats, EmbeddedPostgres


@pytest.fixture(name="nats_url", scope="session")
def fx_nats_url() -> Iterator[str]:
    url = os.environ.get("RELAYPUSH_TEST_NATS_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="relaypush-nats-") as tmp:
        server = EmbeddedNats(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(name="database_url", scope="session")
def fx_database_url() -> Iterator[str]:
    url = os.environ.get("RELAYPUSH_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="relaypush-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(name="unique_name")
def fx_unique_name() -> str:
    """A short name no other test uses: for streams, subject prefixes, schemas, durables."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (``CI`` set), a skipped test is a failure: integration tests must really run there.

    Some tests skip on machines that cannot exercise them (not Linux, not root); CI runs on a
    machine that can, so a skip there means something that should have been tested was not.
    """
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
