"""For tests that run relaypush as a command: its path, a free port, waiting for a condition."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

RELAYPUSH = str(Path(sys.executable).with_name("relaypush"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
