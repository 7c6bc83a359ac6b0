"""The processes ``relaypush serve`` runs beside itself: started, watched, restarted, stopped.

``serve`` keeps the embedded servers, the projector and the audit chainer in its own process and
runs the API workers and the dispatcher as processes of their own (``relaypush api``,
``relaypush dispatcher``), so that one machine's cores all work. A child that exits while the
service runs is started again after a pause that doubles with each quick failure (a child that
ran for a minute starts again at once). On stop, every child gets SIGTERM (each finishes its
in-flight work), and whatever is still running after the grace period gets SIGKILL. Children die
with this process even when it is killed (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from relaypush.embedded import die_with_parent
from relaypush.metrics import process_ended

__all__ = ["Child", "Supervisor"]

log = structlog.get_logger(__name__)

RESTART_DELAY: Final = (1.0, 30.0)
"""Seconds before starting a child that exited: doubling from the first to the second."""
HEALTHY_AFTER: Final = 60.0
"""Seconds a child must have run for its next exit to count as a fresh failure."""


@dataclass(slots=True)
class Child:
    """One process: its name, and the ``relaypush`` command it runs."""

    name: str
    command: Sequence[str]
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    delay: float = RESTART_DELAY[0]
    restarts: int = 0
    waiter: asyncio.Task[int] | None = field(default=None, repr=False)


class Supervisor:
    """Keeps its children running until stopped."""

    def __init__(self, children: Sequence[Child], env: Mapping[str, str]) -> None:
        self.children = list(children)
        self._env = dict(env)

    async def run(self, stop: asyncio.Event, *, grace: float = 15.0) -> None:
        """Start every child and restart those that exit, until ``stop`` is set; then stop
        them all within ``grace`` seconds."""
        try:
            for child in self.children:
                await self._start(child)
            stopper = asyncio.ensure_future(stop.wait())
            while not stop.is_set():
                waiters = {c.waiter for c in self.children if c.waiter is not None}
                done, _ = await asyncio.wait(
                    {stopper, *waiters}, return_when=asyncio.FIRST_COMPLETED
                )
                if stop.is_set():
                    break
                for child in self.children:
                    if child.waiter in done:
                        await self._restart(child, stop)
            stopper.cancel()
        finally:
            await self.stop(grace)

    async def stop(self, grace: float) -> None:
        """SIGTERM every running child, SIGKILL what still runs after ``grace`` seconds."""
        running = [c for c in self.children if c.process and c.process.returncode is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        for child in running:
            assert child.process is not None
            try:
                await asyncio.wait_for(child.process.wait(), timeout=grace)
            except TimeoutError:
                log.warning("child_killed", child=child.name, pid=child.process.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        for child in self.children:
            if child.waiter is not None:
                child.waiter.cancel()
            if child.process is not None:
                process_ended(child.process.pid)

    async def _start(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relaypush.cli",
            *child.command,
            env=self._env,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        child.started_at = time.monotonic()
        child.waiter = asyncio.create_task(child.process.wait())
        log.info("child_started", child=child.name, pid=child.process.pid)

    async def _restart(self, child: Child, stop: asyncio.Event) -> None:
        assert child.process is not None
        process_ended(child.process.pid)
        ran = time.monotonic() - child.started_at
        if ran >= HEALTHY_AFTER:
            child.delay = RESTART_DELAY[0]
        log.warning(
            "child_exited",
            child=child.name,
            pid=child.process.pid,
            code=child.process.returncode,
            ran_seconds=round(ran, 1),
            restart_in=child.delay,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=child.delay)
        if stop.is_set():
            return
        child.delay = min(child.delay * 2, RESTART_DELAY[1])
        child.restarts += 1
        await self._start(child)
