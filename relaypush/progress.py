"""Progress of a long operation (a rebuild) on a stream, usually standard error.

On a terminal, a ``rich.progress`` bar redrawn in place, at most every :data:`TTY_INTERVAL`::

    rebuild ━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━━━  41,000/120,000  34.2%  25,310 ev/s  ETA 0:03

Elsewhere (a pipe, a log file, CI, a ``TERM=dumb`` terminal), a plain line at most every
:data:`LINE_INTERVAL` seconds::

    rebuild: 41,000/120,000 events (34.2%), 25,310 events/s, ETA 0:03

The rate is measured over the last :data:`RATE_WINDOW` seconds, so that the ETA follows a rate
that changes (a catch-up after a bulk replay); :meth:`Progress.summary` gives the average over
the whole run. (rich's own estimate forgets every sample whenever the total changes, and a
rebuild's target moves with the live log.) The clock and the console are injected, so what is
drawn, and when, is tested without waiting.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, Task, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

__all__ = [
    "BAR_WIDTH",
    "LINE_INTERVAL",
    "RATE_WINDOW",
    "TTY_INTERVAL",
    "Progress",
    "format_eta",
    "format_rate",
]

TTY_INTERVAL = 0.1
"""Seconds between two redraws of the bar on a terminal (at most ten a second)."""
LINE_INTERVAL = 5.0
"""Seconds between two plain progress lines."""
RATE_WINDOW = 5.0
"""Seconds of history the current rate is measured over."""
BAR_WIDTH = 40
"""Cells of the bar on a terminal wide enough for it and the figures."""

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


def _percent(done: float, total: float) -> float:
    return 100.0 if total <= 0 else min(100.0, 100.0 * max(done, 0) / total)


class _Figures(ProgressColumn):
    """The figures after the bar (after ``prefix`` where there is no bar), on one line:
    cropped, never wrapped, on a narrow terminal."""

    def __init__(self, figures: Callable[[], str], prefix: str = "") -> None:
        super().__init__(table_column=Column(no_wrap=True, overflow="crop"))
        self.figures = figures
        self.prefix = prefix

    def render(self, task: Task) -> Text:
        return Text(self.prefix + self.figures())


class Progress:
    """Reports ``update(done, total)`` calls: a rich bar when ``console`` is a terminal (by
    default a console on ``stream``, standard error unless given), plain lines otherwise.

    ``update`` is cheap when nothing is drawn, so it may be called after every batch.
    ``close`` ends the bar's line; ``summary`` is the closing figure for the caller to print.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO | None = None,
        *,
        console: Console | None = None,
        clock: Clock = time.monotonic,
        unit: str = "events",
        short_unit: str = "ev",
    ) -> None:
        self.label = label
        self.console = console or Console(
            file=stream if stream is not None else sys.stderr, highlight=False
        )
        self.tty = self.console.is_terminal and not self.console.is_dumb_terminal
        self.clock = clock
        self.unit = unit
        self.short_unit = short_unit
        self.started = clock()
        self.done = 0
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._drawn_at: float | None = None
        self._bar = RichProgress(
            console=self.console,
            auto_refresh=False,  # drawn from update(), by the injected clock
            get_time=clock,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not self.tty,
        )
        self._task: TaskID = self._bar.add_task(label, total=0)

    # -- figures -------------------------------------------------------------------------------

    def rate(self) -> float | None:
        """Per second over the last :data:`RATE_WINDOW` seconds (None before any time has
        passed)."""
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

    def figures(self) -> str:
        """What follows the bar: ``  41,000/120,000  34.2%  25,310 ev/s  ETA 0:03``."""
        return (
            f"  {self.done:,}/{self.total:,}  {_percent(self.done, self.total):5.1f}%"
            f"  {format_rate(self.rate(), f'{self.short_unit}/s')}"
            f"  ETA {format_eta(self.eta())}"
        )

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
        if self.tty:
            self._fit()
            self._bar.update(self._task, completed=self.done, total=self.total)
            if self._drawn_at is None:
                self._bar.start()  # draws
            else:
                self._bar.refresh()
        else:
            self.console.file.write(self.line() + "\n")
            self.console.file.flush()
        self._drawn_at = now

    def _fit(self) -> None:
        """Size the bar to the terminal's width as it is now: without room for five cells of
        bar, the label and the figures alone, cropped."""
        room = self.console.width - len(self.label) - 2 - len(self.figures())
        if room >= 5:
            self._bar.columns = (
                TextColumn("{task.description}"),
                BarColumn(bar_width=min(BAR_WIDTH, room)),
                _Figures(self.figures),
            )
        else:
            self._bar.columns = (_Figures(self.figures, prefix=self.label),)

    def close(self) -> None:
        """On a terminal, draw the bar a last time (as it stands now) and end its line, so
        that what follows starts on a line of its own; nothing otherwise."""
        if self.tty and self._drawn_at is not None:
            self._fit()
            self._bar.update(self._task, completed=self.done, total=self.total)
            self._bar.stop()
            self._drawn_at = None
