"""What the embedded PostgreSQL needs from the machine: the server's binaries, and, when this
process is root, the ``postgres`` system user and a data directory that user can reach."""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

from relaypush.embedded.process import EmbeddedServerError, RunAs, executable

__all__ = [
    "ensure_reachable",
    "find_postgres_bindir",
    "make_dirs",
    "pg_env",
    "pg_major",
    "postgres_run_as",
    "process_is_postgres",
]

_log = logging.getLogger(__name__)

_POSTGRES_USER = "postgres"


def postgres_run_as() -> RunAs | None:
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
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _searchable_by(path: Path, who: RunAs) -> bool:
    """Whether ``who`` may search (traverse) directory ``path``, judged from its mode bits."""
    st = path.stat()
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in who.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _can_reach(directory: Path, who: RunAs) -> bool:
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


def make_dirs(directory: Path) -> list[Path]:
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


def ensure_reachable(directory: Path, who: RunAs, created: list[Path]) -> None:
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


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def _is_pg_bindir(path: Path) -> bool:
    return executable(path / "initdb") and executable(path / "postgres")


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


def pg_major(bindir: Path) -> str | None:
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
        if pg_major(candidate) == major:
            return candidate
    found = ", ".join(f"{c} ({pg_major(c)})" for c in candidates) or "none"
    raise EmbeddedServerError(
        f"this PostgreSQL cluster was created by PostgreSQL {major}, whose server binaries are "
        f"not installed (found: {found}). Install PostgreSQL {major} (Debian/Ubuntu: "
        f"`apt-get install postgresql-{major}`), upgrade the cluster with pg_upgrade, or move the "
        "data directory away to start from an empty database."
    )


def pg_env(run_as: RunAs | None) -> dict[str, str]:
    """The environment for PostgreSQL programs: no ``PG*`` variables, C messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if run_as is not None:
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    return env


def process_is_postgres(pid: int) -> bool:
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
