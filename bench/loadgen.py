"""A lean HTTP/1.1 load generator: keep-alive connections, pre-built requests, latency per request.

Python HTTP clients spend more CPU per request than the server under test; this one writes
prepared bytes and parses only the status line and Content-Length, so that on a 2-core machine
most of the CPU goes to relaypush and NATS, not to the measuring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LoadResult", "percentile", "run_load"]


@dataclass(slots=True)
class LoadResult:
    sent: int = 0
    elapsed: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


class _Pace:
    """Start times ``1 / rate`` apart: the n-th request taken waits until ``start + n / rate``."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.perf_counter()

    async def wait(self) -> None:
        due, self._next = self._next, self._next + self._interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


async def _worker(
    host: str, port: int, requests: list[bytes], result: LoadResult, pace: _Pace | None = None
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while requests:
            request = requests.pop()
            if pace is not None:
                await pace.wait()
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.sent += 1
    finally:
        writer.close()


async def run_load(
    host: str, port: int, requests: list[bytes], concurrency: int, *, rate: float | None = None
) -> LoadResult:
    """Send every request over ``concurrency`` keep-alive connections; time the whole run.

    With ``rate``, requests start at most ``rate`` per second (an open-loop pace, as long as
    ``concurrency`` connections suffice to keep it); without, each connection sends its next
    request as soon as the previous one is answered.
    """
    result = LoadResult()
    queue = list(reversed(requests))
    pace = _Pace(rate) if rate else None
    started = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, queue, result, pace) for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


def build_request(method: str, path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
