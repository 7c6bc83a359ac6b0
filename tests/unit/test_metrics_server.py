"""The stand-alone metrics endpoint serves the registry's exposition text."""

from __future__ import annotations

import httpx

from relaypush.metrics import Registry
from relaypush.metrics_server import serve_metrics


async def test_metrics_are_served_and_other_paths_are_404() -> None:
    registry = Registry()
    registry.counter("relaypush_test_total", "a test counter").inc(3)
    async with serve_metrics(registry, "127.0.0.1", 0) as port, httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "relaypush_test_total 3" in r.text
        assert (await http.get(f"http://127.0.0.1:{port}/other")).status_code == 404
