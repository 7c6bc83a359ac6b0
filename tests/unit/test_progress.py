"""The progress display: rate, ETA, the bar, and how often it draws, on an injected clock."""

from __future__ import annotations

import io
import re

import pytest

from relaypush.progress import (
    LINE_INTERVAL,
    RATE_WINDOW,
    TTY_INTERVAL,
    Progress,
    format_eta,
    format_rate,
    render_bar,
)


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


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


@pytest.mark.parametrize(
    ("done", "total", "bar"),
    [
        (0, 100, "[----------]"),
        (9, 100, "[----------]"),
        (10, 100, "[#---------]"),
        (55, 100, "[#####-----]"),
        (100, 100, "[##########]"),
        (120, 100, "[##########]"),
        (0, 0, "[##########]"),
    ],
)
def test_bar(done: int, total: int, bar: str) -> None:
    assert render_bar(done, total, 10) == bar


def test_rate_and_eta_follow_the_recent_pace() -> None:
    clock = FakeClock()
    progress = Progress("rebuild", io.StringIO(), tty=False, clock=clock)
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


def test_rate_window_spans_the_last_seconds() -> None:
    clock = FakeClock()
    progress = Progress("r", io.StringIO(), tty=False, clock=clock)
    for _ in range(100):
        clock.advance(0.1)
        progress.update(progress.done + 10, 10_000)
    (first, _), (last, _) = progress._samples[0], progress._samples[-1]
    assert RATE_WINDOW <= last - first < RATE_WINDOW + 0.2
    assert progress.rate() == pytest.approx(100.0)


def test_a_growing_total_and_a_finished_run() -> None:
    clock = FakeClock()
    progress = Progress("r", io.StringIO(), tty=False, clock=clock)
    clock.advance(2.0)
    progress.update(500, 400)  # the log grew past the first head
    assert (progress.done, progress.total) == (500, 500)
    assert progress.eta() == 0.0
    assert "100.0%" in progress.line()


def test_terminal_bar_is_redrawn_in_place_at_most_ten_times_a_second() -> None:
    clock = FakeClock()
    out = Terminal()
    progress = Progress("rebuild", out, clock=clock, columns=100)
    assert progress.tty
    for _ in range(100):  # a batch every 10 ms for one second
        clock.advance(0.01)
        progress.update(progress.done + 100, 20_000)
    drawings = out.getvalue().split("\r")[1:]
    assert 9 <= len(drawings) <= 1 / TTY_INTERVAL + 1
    assert "\n" not in out.getvalue()
    last = drawings[-1].rstrip()
    assert last.startswith("rebuild [")
    assert re.search(r"\]  9,[0-9]00/20,000   4[5-9]\.5%  10,000 ev/s  ETA 0:01$", last)
    assert all(len(d) <= 99 for d in drawings)

    clock.advance(0.01)
    progress.update(20_000, 20_000)
    progress.close()
    final = out.getvalue().split("\r")[-1]
    assert final.endswith("\n")
    assert "[" + "#" * 10 in final
    assert "20,000/20,000  100.0%" in final
    assert "ETA 0:00" in final


def test_a_shorter_drawing_blanks_what_the_longer_one_left() -> None:
    clock = FakeClock()
    out = Terminal()
    progress = Progress("r", out, clock=clock, columns=100)
    progress.update(0, 1_000_000)
    clock.advance(1.0)
    progress.update(1, 1)
    first, second = out.getvalue().split("\r")[1:]
    assert len(second) == len(first)


def test_narrow_terminal_drops_the_bar_and_fits() -> None:
    clock = FakeClock()
    progress = Progress("rebuild", Terminal(), clock=clock, columns=40)
    clock.advance(1.0)
    progress.update(1234, 5678)
    text = progress.bar()
    assert "[" not in text
    assert len(text) <= 39


def test_plain_lines_come_every_few_seconds() -> None:
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress("rebuild", out, tty=False, clock=clock)
    for _ in range(200):  # 20 seconds, a batch every 100 ms
        clock.advance(0.1)
        progress.update(progress.done + 500, 10_000_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == pytest.approx(20 / LINE_INTERVAL + 1, abs=1)
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith("rebuild: ")
    assert "5,000 events/s" in lines[-1]
    progress.close()  # nothing more on a pipe
    assert out.getvalue().splitlines() == lines
