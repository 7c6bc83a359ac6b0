"""Prometheus metrics on ``prometheus_client``, behind the small API the rest of relaypush uses.

``registry.counter(name, help, labels)`` (likewise ``gauge`` and ``histogram(...,
buckets=...)``) registers a metric once and returns it again for the same name; label values
are keyword arguments of ``inc``, ``dec``, ``set`` and ``observe``. ``render`` gives the text
exposition (format 0.0.4, :data:`CONTENT_TYPE`). Counters carry no ``_created`` series, as
before prometheus_client.

Several processes, one set of metrics: with ``RELAYPUSH_API_WORKERS`` > 1 the API processes
share a port, and a scrape reaches any one of them. :func:`share_between_processes` (called by
the process that starts the others, before any metric exists; the others inherit it through
``PROMETHEUS_MULTIPROC_DIR``) puts every process's values in one directory, and each process
renders the sum over all of them (prometheus_client's multiprocess mode): counters and
histograms add up, gauges add up over the live processes. This is the one module that touches
prometheus_client's process-wide value class; tests/unit/test_metrics.py fails when a release
changes it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "MULTIPROCESS_DIR_VARIABLE",
    "REGISTRY",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "process_ended",
    "share_between_processes",
    "shared_between_processes",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def _shared_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def share_between_processes(directory: Path) -> None:
    """Keep this process's metric values in ``directory`` (empty, private to this run), and
    every process started from here after (they inherit the environment variable); each one
    then renders the sum over all of them. Call before the first metric is created."""
    os.environ[MULTIPROCESS_DIR_VARIABLE] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def shared_between_processes() -> Iterator[Path]:
    """:func:`share_between_processes` in a new private directory, removed at the end."""
    with tempfile.TemporaryDirectory(prefix="relaypush-metrics-") as directory:
        share_between_processes(Path(directory))
        yield Path(directory)


def process_ended(pid: int) -> None:
    """A process that shared its metrics has exited: its gauges no longer count (its counters
    and histograms still do)."""
    if _shared_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _Metric:
    def __init__(self, name: str, labelnames: tuple[str, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.labelnames = labelnames
        self._registry = registry

    def _sample(self, suffix: str, labels: dict[str, str]) -> float:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return self._registry.get_sample_value(self.name + suffix, labels) or 0.0


class Counter(_Metric):
    """A counter; ``inc(amount, **labels)``."""

    def __init__(
        self, name: str, help_text: str, labelnames: tuple[str, ...], registry: CollectorRegistry
    ) -> None:
        super().__init__(name, labelnames, registry)
        self._counter = prometheus_client.Counter(name, help_text, labelnames, registry=registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._counter.labels(**labels) if labels else self._counter).inc(amount)

    def value(self, **labels: str) -> float:
        return self._sample("" if self.name.endswith("_total") else "_total", labels)


class Gauge(_Metric):
    """A gauge; ``set``, ``inc`` and ``dec`` with ``**labels``. Shared between processes, a
    gauge is the sum over the live ones."""

    def __init__(
        self, name: str, help_text: str, labelnames: tuple[str, ...], registry: CollectorRegistry
    ) -> None:
        super().__init__(name, labelnames, registry)
        self._gauge = prometheus_client.Gauge(
            name, help_text, labelnames, registry=registry, multiprocess_mode="livesum"
        )

    def _child(self, labels: dict[str, str]) -> prometheus_client.Gauge:
        return self._gauge.labels(**labels) if labels else self._gauge

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).dec(amount)

    def set_function(self, fn: Callable[[], float], **labels: str) -> None:
        """Read the value from ``fn`` at each scrape (not when shared between processes)."""
        self._child(labels).set_function(fn)

    def value(self, **labels: str) -> float:
        return self._sample("", labels)


class Histogram(_Metric):
    """A histogram; ``observe(value, **labels)``."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: tuple[str, ...],
        registry: CollectorRegistry,
        buckets: tuple[float, ...],
    ) -> None:
        super().__init__(name, labelnames, registry)
        self._histogram = prometheus_client.Histogram(
            name, help_text, labelnames, registry=registry, buckets=tuple(sorted(buckets))
        )

    def observe(self, value: float, **labels: str) -> None:
        (self._histogram.labels(**labels) if labels else self._histogram).observe(value)

    def count(self, **labels: str) -> int:
        return int(self._sample("_count", labels))


M = TypeVar("M", bound=_Metric)


class Registry:
    """Holds metrics by name; ``render`` gives the exposition text."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, _Metric] = {}

    def _add(self, kind: type[M], name: str, make: Callable[[], M]) -> M:
        existing = self._metrics.get(name)
        if existing is not None:
            if not isinstance(existing, kind):
                raise ValueError(f"metric {name} registered twice with other kinds")
            return existing
        metric = self._metrics[name] = make()
        return metric

    def counter(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Counter:
        labels = tuple(labelnames)
        return self._add(Counter, name, lambda: Counter(name, help_text, labels, self._registry))

    def gauge(self, name: str, help_text: str, labelnames: Iterable[str] = ()) -> Gauge:
        labels = tuple(labelnames)
        return self._add(Gauge, name, lambda: Gauge(name, help_text, labels, self._registry))

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Iterable[str] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> Histogram:
        labels = tuple(labelnames)
        return self._add(
            Histogram, name, lambda: Histogram(name, help_text, labels, self._registry, buckets)
        )

    def render(self) -> str:
        """The text exposition; when shared between processes, the sum over all of them."""
        shared = _shared_dir()
        if shared is None:
            return generate_latest(self._registry).decode()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=shared)  # type: ignore[no-untyped-call]
        return generate_latest(merged).decode()


REGISTRY = Registry()
