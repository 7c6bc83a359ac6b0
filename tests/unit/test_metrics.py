"""The metrics facade on prometheus_client: names, help, types and labels as registered, and one
set of values over several processes (the hook into prometheus_client's value class)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relaypush.metrics import MULTIPROCESS_DIR_VARIABLE, Registry, process_ended


def test_counters_gauges_and_histograms_render_as_registered() -> None:
    registry = Registry()
    sends = registry.counter("relaypush_deliveries_total", "Send attempts", ("provider", "outcome"))
    sends.inc(provider="noop", outcome="delivered")
    sends.inc(2, provider="noop", outcome="delivered")
    inflight = registry.gauge("relaypush_dispatcher_inflight", "Sends under way")
    inflight.inc()
    inflight.inc()
    inflight.dec()
    latency = registry.histogram(
        "relaypush_delivery_latency_seconds", "Provider call latency", ("provider",), (0.5, 0.1)
    )
    latency.observe(0.2, provider="fcm")
    text = registry.render()
    assert "# HELP relaypush_deliveries_total Send attempts\n" in text
    assert "# TYPE relaypush_deliveries_total counter\n" in text
    assert 'relaypush_deliveries_total{outcome="delivered",provider="noop"} 3.0\n' in text
    assert "# TYPE relaypush_dispatcher_inflight gauge\nrelaypush_dispatcher_inflight 1.0\n" in text
    assert "# TYPE relaypush_delivery_latency_seconds histogram\n" in text
    assert 'relaypush_delivery_latency_seconds_bucket{le="0.1",provider="fcm"} 0.0\n' in text
    assert 'relaypush_delivery_latency_seconds_bucket{le="0.5",provider="fcm"} 1.0\n' in text
    assert 'relaypush_delivery_latency_seconds_bucket{le="+Inf",provider="fcm"} 1.0\n' in text
    assert 'relaypush_delivery_latency_seconds_count{provider="fcm"} 1.0\n' in text
    assert "_created" not in text
    assert sends.value(provider="noop", outcome="delivered") == 3
    assert inflight.value() == 1
    assert latency.count(provider="fcm") == 1


def test_label_values_are_escaped() -> None:
    registry = Registry()
    registry.counter("relaypush_x_total", "x", ("route",)).inc(route='a"b\\c\nd')
    assert 'relaypush_x_total{route="a\\"b\\\\c\\nd"} 1.0' in registry.render()


def test_a_name_registers_once_and_keeps_its_kind() -> None:
    registry = Registry()
    first = registry.counter("relaypush_y_total", "y", ("type",))
    assert registry.counter("relaypush_y_total", "y", ("type",)) is first
    with pytest.raises(ValueError, match="other kinds"):
        registry.gauge("relaypush_y_total", "y")
    with pytest.raises(ValueError):
        first.inc(kind="wrong")


def _process(directory: Path, script: str, *, share: bool) -> str:
    """Run ``script`` in a new Python process that shares metrics in ``directory``."""
    env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_DIR_VARIABLE}
    if not share:  # started by a process that shares: it inherits the directory
        env[MULTIPROCESS_DIR_VARIABLE] = str(directory)
    prologue = "from pathlib import Path\nfrom relaypush import metrics\n"
    if share:
        prologue += f"metrics.share_between_processes(Path({str(directory)!r}))\n"
    done = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


REGISTER = """
counter = metrics.REGISTRY.counter("relaypush_events_appended_total", "Events", ("type",))
gauge = metrics.REGISTRY.gauge("relaypush_dispatcher_inflight", "Sends under way")
histogram = metrics.REGISTRY.histogram("relaypush_delivery_attempts", "Attempts", buckets=(1, 2))
"""


def test_processes_that_share_render_the_sum_of_all(tmp_path: Path) -> None:
    first = (
        REGISTER
        + """
counter.inc(2, type="client.registered")
gauge.set(3)
histogram.observe(1)
import os
print(os.getpid())
"""
    )
    pid = int(_process(tmp_path, first, share=True))
    second = (
        REGISTER
        + """
counter.inc(5, type="client.registered")
gauge.set(4)
histogram.observe(2)
print(metrics.REGISTRY.render())
"""
    )
    text = _process(tmp_path, second, share=False)
    assert 'relaypush_events_appended_total{type="client.registered"} 7.0' in text
    assert "# HELP relaypush_events_appended_total Events" in text
    assert "relaypush_dispatcher_inflight 7.0" in text  # both still count as live
    assert 'relaypush_delivery_attempts_bucket{le="1.0"} 1.0' in text
    assert "relaypush_delivery_attempts_count 2.0" in text

    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(tmp_path)
    try:
        process_ended(pid)  # the first process ended: its gauge goes, its counts stay
    finally:
        del os.environ[MULTIPROCESS_DIR_VARIABLE]
    text = _process(tmp_path, "print(metrics.REGISTRY.render())", share=False)
    assert 'relaypush_events_appended_total{type="client.registered"} 7.0' in text
    assert "relaypush_dispatcher_inflight 4.0" in text
