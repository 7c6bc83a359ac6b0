"""Progress of a long operation (a rebuild) on a stream, usually standard error.

On a terminal, one line redrawn in place, at most :data:`TTY_INTERVAL` apart::

    rebuild [##########--------------------]  41,000/120,000  34.2%  25,310 ev/s  ETA 0:03

Elsewhere (a pipe, a log file, CI), a plain line at most every :data:`LINE_INTERVAL` seconds::

    rebuild: 41,000/120,000 events (34.2%), 25,310 events/s, ETA 0:03

The rate is measured over the last :data:`RATE_WINDOW` seconds, so that the ETA follows a rate
that changes (a catch-up after a bulk replay); :meth:`Progress.summary` gives the average over
the whole run. The clock is injected, so the formatting is tested without waiting.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

__all__ = [
    "LINE_INTERVAL",
    "RATE_WINDOW",
    "TTY_INTERVAL",
    "Progress",
    "format_eta",
    "format_rate",
    "render_bar",
]

TTY_INTERVAL = 0.1
"""Seconds between two redraws of the bar on a terminal (at most ten a second)."""
LINE_INTERVAL = 5.0
"""Seconds between two plain progress lines."""
RATE_WINDOW = 5.0
"""Seconds of history the current rate is measured over."""

Clock = Callable[[], float]


def format_rate(rate: float | None, unit: str = "ev/s") -> str:
    """``12,345 ev/s``; ``- ev/s`` when not known yet."""
    if rate is None:
        return f"- {unit}"
    return f"{rate:,.0f} {unit}"


def format_eta(seconds: float | None) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on; ``--:--`` when not known."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "--:--"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def render_bar(done: int, total: int, width: int) -> str:
    """``[####------]``: ``width`` cells between the brackets, full when ``done >= total``."""
    width = max(width, 1)
    filled = width if total <= 0 or done >= total else max(0, done) * width // total
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _percent(done: int, total: int) -> float:
    return 100.0 if total <= 0 else min(100.0, 100.0 * max(done, 0) / total)


class Progress:
    """Reports ``update(done, total)`` calls on ``stream``: a bar when it is a terminal
    (``tty``, by default ``stream.isatty()``), plain lines otherwise.

    ``update`` is cheap when nothing is drawn, so it may be called after every batch.
    ``close`` ends the bar's line; ``summary`` is the closing figure for the caller to print.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Clock = time.monotonic,
        columns: int | None = None,
        unit: str = "events",
        short_unit: str = "ev",
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.columns = columns
        self.unit = unit
        self.short_unit = short_unit
        self.started = clock()
        self.done = 0
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._drawn_at: float | None = None
        self._drawn_width = 0

    # -- figures -------------------------------------------------------------------------------

    def rate(self) -> float | None:
        """Events a second over the last :data:`RATE_WINDOW` seconds (None before any time
        has passed)."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 <= t0:
            return None
        return max(0.0, (d1 - d0) / (t1 - t0))

    def eta(self) -> float | None:
        """Seconds left at the current rate (0 when done, None when the rate is unknown)."""
        if len(self._samples) < 2:
            return None  # nothing reported yet
        left = self.total - self.done
        if left <= 0:
            return 0.0
        rate = self.rate()
        if not rate:
            return None
        return left / rate

    def elapsed(self) -> float:
        return self.clock() - self.started

    def line(self) -> str:
        """The plain progress line."""
        return (
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit}"
            f" ({_percent(self.done, self.total):.1f}%),"
            f" {format_rate(self.rate(), f'{self.unit}/s')}, ETA {format_eta(self.eta())}"
        )

    def bar(self) -> str:
        """The terminal line: label, bar and figures, fitted to the terminal's width."""
        columns = self.columns or shutil.get_terminal_size((100, 24)).columns
        figures = (
            f"  {self.done:,}/{self.total:,}  {_percent(self.done, self.total):5.1f}%"
            f"  {format_rate(self.rate(), f'{self.short_unit}/s')}"
            f"  ETA {format_eta(self.eta())}"
        )
        room = columns - 1 - len(self.label) - 1 - len(figures)  # the last column stays free
        width = min(40, room - 2)
        if width >= 5:
            return f"{self.label} {render_bar(self.done, self.total, width)}{figures}"
        return f"{self.label}{figures}"[: max(columns - 1, 1)]

    def summary(self) -> str:
        """``50,000 events in 2.0s, 25,000 events/s``: the average over the whole run."""
        elapsed = self.elapsed()
        rate = self.done / elapsed if elapsed > 0 else None
        return f"{self.done:,} {self.unit} in {elapsed:.1f}s, {format_rate(rate, f'{self.unit}/s')}"

    # -- reporting -----------------------------------------------------------------------------

    def update(self, done: int, total: int) -> None:
        """Record progress; draw when the last drawing is old enough (the first is drawn at
        once)."""
        now = self.clock()
        self.done = done
        self.total = max(total, done)
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        interval = TTY_INTERVAL if self.tty else LINE_INTERVAL
        if self._drawn_at is None or now - self._drawn_at >= interval:
            self._draw(now)

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        if self.tty:
            text = self.bar()
            pad = " " * max(0, self._drawn_width - len(text))
            self.stream.write(f"\r{text}{pad}")
            self._drawn_width = len(text)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """On a terminal, draw the bar a last time (as it stands now) and end its line, so
        that what follows starts on a line of its own; nothing otherwise."""
        if self.tty and self._drawn_at is not None:
            self._draw(self.clock())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn_at = None
            self._drawn_width = 0
