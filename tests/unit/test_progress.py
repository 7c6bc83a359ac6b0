"""The progress display: rate, ETA, rich's bar and plain lines, and how often each is drawn,
on an injected clock and console."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from relaypush.progress import (
    LINE_INTERVAL,
    RATE_WINDOW,
    TTY_INTERVAL,
    Progress,
    format_eta,
    format_rate,
)

_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def fx_a_capable_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich reads these from the environment: make every run see the same terminal."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def terminal(width: int = 100) -> Console:
    return Console(
        file=io.StringIO(), force_terminal=True, width=width, color_system=None, highlight=False
    )


def frames(console: Console) -> list[str]:
    """What each drawing of the bar showed, control sequences removed."""
    written = console.file.getvalue()  # type: ignore[attr-defined]
    return [f for f in (_CONTROL.sub("", part) for part in written.split("\r")) if f.strip()]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "--:--"),
        (float("inf"), "--:--"),
        (float("nan"), "--:--"),
        (0.0, "0:00"),
        (0.4, "0:00"),
        (59.6, "1:00"),
        (75, "1:15"),
        (3599, "59:59"),
        (3600, "1:00:00"),
        (3 * 3600 + 62, "3:01:02"),
        (-5, "0:00"),
    ],
)
def test_eta_format(seconds: float | None, text: str) -> None:
    assert format_eta(seconds) == text


def test_rate_format() -> None:
    assert format_rate(None) == "- ev/s"
    assert format_rate(25310.4) == "25,310 ev/s"
    assert format_rate(0.4, "events/s") == "0 events/s"


def test_rate_and_eta_follow_the_recent_pace() -> None:
    clock = FakeClock()
    progress = Progress("rebuild", io.StringIO(), clock=clock)
    assert progress.rate() is None
    assert progress.eta() is None
    for _ in range(10):  # 1,000 events a second for ten seconds
        clock.advance(1.0)
        progress.update(progress.done + 1000, 100_000)
    assert progress.rate() == pytest.approx(1000.0)
    assert progress.eta() == pytest.approx(90.0)
    for _ in range(10):  # then 4,000 a second: the window forgets the slow part
        clock.advance(1.0)
        progress.update(progress.done + 4000, 100_000)
    assert progress.rate() == pytest.approx(4000.0)
    assert progress.eta() == pytest.approx(50_000 / 4000)
    assert progress.line() == "rebuild: 50,000/100,000 events (50.0%), 4,000 events/s, ETA 0:12"
    # the summary averages the whole run
    assert progress.summary() == "50,000 events in 20.0s, 2,500 events/s"


def test_a_stall_longer_than_the_window_makes_the_eta_unknown() -> None:
    clock = FakeClock()
    progress = Progress("r", io.StringIO(), clock=clock)
    for _ in range(10):
        clock.advance(0.5)
        progress.update(progress.done + 100, 10_000)
    assert progress.rate() == pytest.approx(200.0)
    for _ in range(int(RATE_WINDOW) + 2):  # the log stops moving
        clock.advance(1.0)
        progress.update(progress.done, 10_000)
    assert progress.eta() is None
    assert progress.line().endswith("ETA --:--")


def test_a_growing_total_and_a_finished_run() -> None:
    clock = FakeClock()
    progress = Progress("r", io.StringIO(), clock=clock)
    clock.advance(2.0)
    progress.update(500, 400)  # the log grew past the first head
    assert (progress.done, progress.total) == (500, 500)
    assert progress.eta() == 0.0
    assert "100.0%" in progress.line()
    clock.advance(1.0)
    progress.update(600, 1000)  # and grows again: no longer done, at 600 events in 3 s
    assert progress.eta() == pytest.approx(400 / 200)


def test_terminal_bar_is_redrawn_in_place_at_most_ten_times_a_second() -> None:
    clock = FakeClock()
    console = terminal()
    progress = Progress("rebuild", console=console, clock=clock)
    assert progress.tty
    for _ in range(100):  # a batch every 10 ms for one second
        clock.advance(0.01)
        progress.update(progress.done + 100, 20_000)
    drawn = frames(console)
    assert 9 <= len(drawn) <= 1 / TTY_INTERVAL + 1
    assert "\n" not in console.file.getvalue()  # type: ignore[attr-defined]
    last = drawn[-1].rstrip()
    assert last.startswith("rebuild ━")
    assert re.search(r"  9,[0-9]00/20,000   4[5-9]\.5%  10,000 ev/s  ETA 0:01$", last)
    assert all(len(d) <= 100 for d in drawn)

    clock.advance(0.01)
    progress.update(20_000, 20_000)
    progress.close()
    written = _CONTROL.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    assert written.endswith("\n")
    final = frames(console)[-1]
    assert "━" * 40 in final
    assert "20,000/20,000  100.0%" in final
    assert "ETA 0:00" in final


def test_the_bar_fills_in_proportion() -> None:
    clock = FakeClock()
    console = terminal()
    progress = Progress("r", console=console, clock=clock)
    progress.update(500, 1000)
    (drawn,) = frames(console)
    assert drawn.count("━") == 20  # half of the 40 cells
    assert "500/1,000   50.0%" in drawn


def test_narrow_terminal_drops_the_bar_and_fits() -> None:
    clock = FakeClock()
    console = terminal(width=40)
    progress = Progress("rebuild", console=console, clock=clock)
    clock.advance(1.0)
    progress.update(1234, 5678)
    (drawn,) = frames(console)
    assert drawn.startswith("rebuild  1,234/5,678")
    assert "━" not in drawn
    assert len(drawn.rstrip("\n")) <= 40


def test_plain_lines_come_every_few_seconds() -> None:
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress("rebuild", out, clock=clock)
    assert not progress.tty
    for _ in range(200):  # 20 seconds, a batch every 100 ms
        clock.advance(0.1)
        progress.update(progress.done + 500, 10_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == pytest.approx(20 / LINE_INTERVAL + 1, abs=1)
    assert "\r" not in out.getvalue()
    assert "\x1b" not in out.getvalue()
    assert lines[-1].startswith("rebuild: ")
    assert "5,000 events/s" in lines[-1]
    progress.close()  # nothing more on a pipe
    assert out.getvalue().splitlines() == lines


def test_a_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    clock = FakeClock()
    console = terminal()
    progress = Progress("rebuild", console=console, clock=clock)
    assert not progress.tty
    clock.advance(1.0)
    progress.update(10, 100)
    progress.close()
    assert console.file.getvalue() == progress.line() + "\n"  # type: ignore[attr-defined]
