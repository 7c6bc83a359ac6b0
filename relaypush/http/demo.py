"""The Web Push demo page: a browser subscribes itself and registers as a ``webpush`` client.

    GET /demo/webpush              the page (static HTML and script, no build step)
    GET /demo/webpush/sw.js        its service worker: shows each push as a notification
    GET /demo/webpush/config       {"vapid_public_key": the default tenant's, or null}

The files ship in the package (``relaypush/http/demo/``); docs/webpush.md walks through them.
The page takes ``?tenant=<id>&key=<VAPID public key>`` for another tenant, whose key
``GET /tenants/{id}`` shows. Nothing here is secret: the public key is what browsers subscribe
with.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Final

import msgspec
from litestar import MediaType, Response, get
from litestar.handlers import HTTPRouteHandler

__all__ = ["DEMO_FILES", "demo_route_handlers"]

#: The demo's files in the package, by what they are.
DEMO_FILES: Final = {"page": "webpush.html", "service_worker": "webpush-sw.js"}
_NO_STORE: Final = {"cache-control": "no-store"}


class DemoConfig(msgspec.Struct, frozen=True):
    vapid_public_key: str | None


@cache
def _read(name: str) -> bytes:
    return resources.files("relaypush.http").joinpath("demo", name).read_bytes()


def demo_route_handlers(*, vapid_public_key: str | None) -> Sequence[HTTPRouteHandler]:
    """The demo's routes; ``vapid_public_key`` is the default tenant's (None without one)."""
    config = msgspec.json.encode(DemoConfig(vapid_public_key))

    async def page() -> Response[bytes]:
        return Response(_read(DEMO_FILES["page"]), media_type=MediaType.HTML, headers=_NO_STORE)

    async def service_worker() -> Response[bytes]:
        return Response(
            _read(DEMO_FILES["service_worker"]),
            media_type="text/javascript; charset=utf-8",
            headers=_NO_STORE,
        )

    async def demo_config() -> Response[bytes]:
        return Response(config, media_type=MediaType.JSON, headers=_NO_STORE)

    return [
        get("/demo/webpush", name="webpush_demo", include_in_schema=False)(page),
        get("/demo/webpush/sw.js", name="webpush_demo_sw", include_in_schema=False)(service_worker),
        get("/demo/webpush/config", name="webpush_demo_config", include_in_schema=False)(
            demo_config
        ),
    ]
