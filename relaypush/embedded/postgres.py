"""The embedded PostgreSQL: a private cluster under a data directory, loopback TCP only."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
import psycopg.errors
from psycopg import sql

from relaypush.embedded.postgres_system import (
    ensure_reachable,
    find_postgres_bindir,
    make_dirs,
    pg_env,
    pg_major,
    postgres_run_as,
    process_is_postgres,
)
from relaypush.embedded.process import (
    POLL_INTERVAL,
    EmbeddedServerError,
    RunAs,
    ServerProcess,
    executable,
    has_exited,
    netloc,
    read_pid,
    reap,
)

__all__ = ["EmbeddedPostgres"]

_log = logging.getLogger(__name__)

_SUPERUSER = "postgres"


class EmbeddedPostgres(ServerProcess):
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
        self._run_as: RunAs | None = None
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
        return f"postgresql://{_SUPERUSER}@{netloc(self._host, self.port)}/{quote(database, '')}"

    def _in_use_message(self) -> str:
        pid = read_pid(self.cluster_dir / "postmaster.pid")
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
        run_as = postgres_run_as()
        self._run_as = run_as
        created = make_dirs(self._dir)
        if run_as is not None:
            ensure_reachable(self._dir, run_as, created)
        # processes of a killed postmaster hold the lock until they notice and exit
        self._acquire_lock(wait=min(timeout, 10.0))
        try:
            bindir = self._prepare_cluster(run_as, deadline)
            self._active_bindir = bindir
            env = pg_env(run_as)
            # SIGINT: fast shutdown, as `pg_ctl stop -m fast`
            self._launch(deadline, run_as=run_as, env=env, parent_death_signal=signal.SIGINT)
        except BaseException:
            self._abort_start()
            raise

    def _argv(self, port: int) -> list[str]:
        assert self._active_bindir is not None
        argv = [
            str(self._active_bindir / "postgres"),
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
        return argv

    def _prepare_cluster(self, run_as: RunAs | None, deadline: float) -> Path:
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
            if pg_major(bindir) != major:
                raise EmbeddedServerError(
                    f"{cluster} was created by PostgreSQL {major}, but {bindir} holds "
                    f"PostgreSQL {pg_major(bindir)}"
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
        pid = read_pid(pid_file)
        if pid is None:
            return
        if process_is_postgres(pid):
            raise EmbeddedServerError(
                f"PostgreSQL (pid {pid}) is running on {self.cluster_dir}, started outside "
                f"relaypush. Stop it (`kill -INT {pid}`) and retry, or use another data directory."
            )
        _log.warning("removing stale %s (pid %d is gone)", pid_file, pid)
        pid_file.unlink(missing_ok=True)

    def _initdb(self, bindir: Path, run_as: RunAs | None, deadline: float) -> None:
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
                env=pg_env(run_as),
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
            if has_exited(proc):
                return False
            remaining = deadline - time.monotonic()
            if not self._postmaster_ready(proc.pid):
                if remaining <= 0:
                    self._process = None
                    raise self._startup_failed(proc, "did not become ready in time")
                time.sleep(POLL_INTERVAL)
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
            time.sleep(POLL_INTERVAL)

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
            if not has_exited(proc):
                self._fast_shutdown(proc, timeout)
            reap(proc)
        finally:
            self._process = None
            self._release_lock()

    def _fast_shutdown(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        bindir = self._active_bindir or self._bindir or find_postgres_bindir()
        pg_ctl = bindir / "pg_ctl"
        run_as = self._run_as
        stopped = False
        if executable(pg_ctl):
            argv = [str(pg_ctl), "stop", "-D", str(self.cluster_dir), "-m", "fast", "-s"]
            argv += ["-w", "-t", str(max(1, int(timeout)))]
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    cwd="/",
                    env=pg_env(run_as),
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
