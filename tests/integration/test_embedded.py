"""The embedded NATS and PostgreSQL: start, stop, data kept across restarts and crashes.

These start servers of their own (in ``tempfile.mkdtemp()`` directories under /tmp, which the
``postgres`` user can reach when the tests run as root), unlike the rest of the suite, which
shares the session's servers.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest

from relaypush.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError

pytestmark = pytest.mark.integration

SYSTEM_PORTS = {4222, 5432}


@pytest.fixture(name="tmp_dir")
def fx_tmp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="relaypush-embedded-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _hex_address(text: str) -> str:
    raw = bytes.fromhex(text)
    # /proc/net/tcp* print addresses as native-endian 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _tcp_listeners(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on, over IPv4 and IPv6."""
    inodes = _socket_inodes(pid)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_hex_address(address), int(port, 16)))
    return found


def _unix_listeners(pid: int) -> list[str]:
    inodes = _socket_inodes(pid)
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[6] in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            found.append(fields[7] if len(fields) > 7 else "(unnamed)")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


async def test_nats_keeps_streams_across_restarts_and_listens_on_loopback_only(
    tmp_dir: Path, unique_name: str
) -> None:
    server = EmbeddedNats(tmp_dir)
    server.start()
    try:
        port = server.port
        assert port not in SYSTEM_PORTS
        assert server.url == f"nats://127.0.0.1:{port}"
        assert server.pid is not None
        assert _tcp_listeners(server.pid) == {("127.0.0.1", port)}
        assert os.getpgid(server.pid) == server.pid  # own process group: no terminal Ctrl-C

        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name=unique_name, subjects=[f"{unique_name}.>"])
        await js.publish(f"{unique_name}.a", b"kept")
        await nc.close()

        with pytest.raises(EmbeddedServerError, match="in use"):
            EmbeddedNats(tmp_dir).start(timeout=0.2)

        pid = server.pid
        server.stop()
        assert server.pid is None
        _wait_gone(pid)

        server.start()
        assert server.pid != pid
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info(unique_name)
        assert info.state.messages == 1
        await nc.close()
    finally:
        server.stop()
    assert (tmp_dir / "nats-server.log").stat().st_size > 0


def test_postgres_keeps_tables_across_restarts_and_listens_on_loopback_only(
    tmp_dir: Path,
) -> None:
    server = EmbeddedPostgres(tmp_dir, durable=False)
    server.start()
    try:
        port = server.port
        assert port not in SYSTEM_PORTS
        assert server.url == f"postgresql://postgres@127.0.0.1:{port}/relaypush"
        assert server.pid is not None
        assert _tcp_listeners(server.pid) == {("127.0.0.1", port)}
        assert _unix_listeners(server.pid) == []
        assert os.getpgid(server.pid) == server.pid

        with psycopg.connect(server.url) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('before restart')")

        with pytest.raises(EmbeddedServerError, match="in use"):
            EmbeddedPostgres(tmp_dir).start(timeout=0.2)

        pid = server.pid
        server.stop()
        assert server.pid is None
        _wait_gone(pid)

        server.start()
        with psycopg.connect(server.url) as conn:
            rows = conn.execute("SELECT v FROM kept").fetchall()
            conn.execute("INSERT INTO kept VALUES ('before kill')")
        assert rows == [("before restart",)]

        os.kill(pid := server.pid, signal.SIGKILL)  # the same object restarts a killed server
        deadline = time.monotonic() + 10
        while server.running:
            assert time.monotonic() < deadline, f"postgres pid {pid} survived SIGKILL"
            time.sleep(0.01)
        server.start()
        assert server.pid != pid
        with psycopg.connect(server.url) as conn:
            rows = conn.execute("SELECT v FROM kept ORDER BY v").fetchall()
        assert rows == [("before kill",), ("before restart",)]
    finally:
        server.stop()


_PARENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path

    import nats, psycopg
    from relaypush.embedded import EmbeddedNats, EmbeddedPostgres

    nats_server = EmbeddedNats(Path(sys.argv[1]) / "nats")
    nats_server.start()
    postgres = EmbeddedPostgres(Path(sys.argv[1]) / "pg", durable=False)
    postgres.start()

    async def add_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(name="KEPT", subjects=["kept.>"])
        await nc.jetstream().publish("kept.a", b"before crash")
        await nc.close()

    asyncio.run(add_stream())
    with psycopg.connect(postgres.url) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before crash')")
    print(nats_server.pid, postgres.pid, flush=True)
    time.sleep(600)
    """
)


def _start_parent(data_dir: Path) -> tuple[int, int]:
    """Run servers in a child Python, SIGKILL it; return the (nats, postgres) pids it printed."""
    with subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(data_dir)], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            nats_pid, postgres_pid = map(int, parent.stdout.readline().split())
        finally:
            parent.kill()
    return nats_pid, postgres_pid


async def _stream_messages(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()
    return info.state.messages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_servers_stop_when_their_parent_is_killed(tmp_dir: Path) -> None:
    nats_pid, postgres_pid = _start_parent(tmp_dir)
    _wait_gone(nats_pid)  # SIGTERM from the kernel: graceful
    _wait_gone(postgres_pid)  # SIGINT: fast shutdown
    assert not (tmp_dir / "pg" / "pgdata" / "postmaster.pid").exists()

    with EmbeddedNats(tmp_dir / "nats") as nats_server:
        assert await _stream_messages(nats_server.url, "KEPT") == 1
    with (
        EmbeddedPostgres(tmp_dir / "pg", durable=False) as postgres,
        psycopg.connect(postgres.url) as conn,
    ):
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before crash",)]


def test_postgres_starts_after_postgres_and_its_parent_were_killed(tmp_dir: Path) -> None:
    """kill -9 of postgres, then of its parent: a stale postmaster.pid, orphaned backends."""
    with subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_dir)], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            _, postgres_pid = map(int, parent.stdout.readline().split())
            os.kill(postgres_pid, signal.SIGKILL)
        finally:
            parent.kill()
    assert (tmp_dir / "pg" / "pgdata" / "postmaster.pid").exists()

    with (
        EmbeddedPostgres(tmp_dir / "pg", durable=False) as postgres,
        psycopg.connect(postgres.url) as conn,
    ):
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before crash",)]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_explains_a_data_dir_the_postgres_user_cannot_reach() -> None:
    home = Path.home()
    if home.stat().st_mode & stat.S_IXOTH or home.stat().st_uid != 0:
        pytest.skip(f"{home} is not a private root home directory")
    # in /root: private, outside any temporary area, so never opened up
    private = Path(tempfile.mkdtemp(prefix=".relaypush-embedded-test-", dir=home))
    try:
        server = EmbeddedPostgres(private / "data")
        with pytest.raises(EmbeddedServerError) as caught:
            server.start()
        message = str(caught.value)
        assert str(private) in message
        assert "RELAYPUSH_DATA_DIR" in message
        assert "RELAYPUSH_DATABASE_URL" in message
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert not (private / "data" / "pgdata").exists()
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_reaches_a_data_dir_nested_in_a_private_temp_dir(tmp_dir: Path) -> None:
    nested = tmp_dir / "private"
    nested.mkdir(mode=0o700)
    with (
        EmbeddedPostgres(nested / "data", durable=False) as server,
        psycopg.connect(server.url) as conn,
    ):
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert stat.S_IMODE(tmp_dir.stat().st_mode) == 0o701  # entered, not listed, by others
