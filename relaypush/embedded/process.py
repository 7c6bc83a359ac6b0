"""What both embedded servers share: ports, a lock file, a log, one child process in its group.

:class:`ServerProcess` is the base of :class:`~relaypush.embedded.nats.EmbeddedNats` and
:class:`~relaypush.embedded.postgres.EmbeddedPostgres`: it holds the directory's ``flock``,
appends the server's output to its log (rotating a big one), starts the server in its own
process group with a parent-death signal (:func:`die_with_parent`), and retries on a new port
when another process took the one it picked before the server bound it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = [
    "POLL_INTERVAL",
    "RESERVED_PORTS",
    "EmbeddedServerError",
    "RunAs",
    "ServerProcess",
    "die_with_parent",
    "executable",
    "free_port",
    "has_exited",
    "netloc",
    "read_pid",
    "reap",
]

_log = logging.getLogger(__name__)

#: Ports a system-wide service commonly owns; ``free_port`` never returns one of them.
RESERVED_PORTS = frozenset({4222, 5432, 6222, 7422, 7522, 8222, 5433, 5434})

#: How many times ``start()`` tries again with a new port when another process took the one it
#: picked between choosing it and the server binding it.
_PORT_ATTEMPTS = 3
#: A log file larger than this is moved to ``<name>.1`` when the server starts.
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
POLL_INTERVAL = 0.02


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or stopped; the message says what to do."""


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


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def read_pid(path: Path) -> int | None:
    """The PID on the first line of a pid file, or None when there is none."""
    try:
        first = path.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of ``proc``'s process group, then reap ``proc``.

    Only call this once ``proc`` has exited (or must die now): while its PID is not reaped it
    cannot be reused, so the ``killpg`` can only reach processes it started.
    """
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
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
class RunAs:
    """The unprivileged user a server runs as when this process is root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class ServerProcess:
    """What both servers share: a log file, a lock file, one child process in its own group.

    A subclass names its program (``_name``: its log is ``<name>.log`` and its lock file
    ``<name>.lock`` in the directory), says how to run it on a port (``_argv``) and when it is
    ready (``_wait_ready``), and calls :meth:`_launch` from ``start`` with the lock held.
    """

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
        return None if proc is None or has_exited(proc) else proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    @property
    def log_path(self) -> Path:
        """The file the server's output is appended to across restarts: ``<name>.log``."""
        return self._dir / f"{self._name}.log"

    @property
    def url(self) -> str:
        """The URL clients connect to (known once started)."""
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
        return self._dir / f"{self._name}.lock"

    def _in_use_message(self) -> str:
        raise NotImplementedError

    def _argv(self, port: int) -> list[str]:
        """The server's command line for listening on ``port``."""
        raise NotImplementedError

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once the server is ready; False when the process exited; raises on timeout."""
        raise NotImplementedError

    def _launch(
        self,
        deadline: float,
        *,
        run_as: RunAs | None,
        env: dict[str, str] | None,
        parent_death_signal: signal.Signals,
    ) -> None:
        """Run the server (``_argv``) until ready (``_wait_ready``); pick another port and try
        again when another process took the chosen one before the server bound it."""
        for attempt in range(_PORT_ATTEMPTS):
            port = self._choose_port(attempt)
            argv = self._argv(port)
            proc = self._spawn(
                argv, run_as=run_as, env=env, parent_death_signal=parent_death_signal
            )
            self._process = proc
            self._port = port
            if self._wait_ready(proc, deadline):
                _log.info("embedded %s pid %d listening on %s", self._name, proc.pid, self.url)
                return
            retry = (
                self._requested_port is None
                and attempt + 1 < _PORT_ATTEMPTS
                and self._log_says_port_taken()
            )
            self._process = None
            if not retry:
                raise self._startup_failed(proc, "exited during start-up")
            reap(proc)
            _log.info("port %d was taken before %s bound it; trying another", port, self._name)
        raise EmbeddedServerError("unreachable")  # pragma: no cover

    def _forget_dead_process(self) -> None:
        """Clear up after a server process that died on its own (crash, ``kill -9``)."""
        proc = self._process
        if proc is not None and has_exited(proc):
            reap(proc)
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
            reap(self._process)
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
        run_as: RunAs | None,
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
        reap(proc)
        return EmbeddedServerError(
            f"embedded {self._name} {what} (exit status {proc.returncode}){self._log_tail()}"
        )

    def _log_says_port_taken(self) -> bool:
        tail = self._log_tail(60).lower()
        return "address already in use" in tail
