"""An httpx client that drives a litestar app in-process, on the caller's event loop.

litestar's own test client runs the app through a portal; clients of real NATS connections need
the app on the same loop as the test, which httpx's ASGI transport gives.
"""

from __future__ import annotations

import httpx
from litestar import Litestar


def asgi_client(app: Litestar) -> httpx.AsyncClient:
    # litestar's ASGI signature is stricter than the one httpx declares; they are compatible
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://relaypush")
