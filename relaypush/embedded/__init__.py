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

from relaypush.embedded.nats import EmbeddedNats, find_nats_server
from relaypush.embedded.postgres import EmbeddedPostgres
from relaypush.embedded.postgres_system import find_postgres_bindir
from relaypush.embedded.process import (
    RESERVED_PORTS,
    EmbeddedServerError,
    die_with_parent,
    free_port,
)

__all__ = [
    "RESERVED_PORTS",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "die_with_parent",
    "find_nats_server",
    "find_postgres_bindir",
    "free_port",
]
