"""CORS for the tenant routes, so that a dashboard in a browser can manage its tenant.

Every response under ``/tenants`` (errors included) carries ``Access-Control-Allow-Origin: *``
and exposes ``X-Request-Id`` and ``Retry-After``. A preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered here, before routing, guards and authentication
(browsers send it without credentials): 204, allowing ``GET``, ``POST``, ``DELETE`` and the
``authorization`` and ``content-type`` headers. Relay and wallet routes get no CORS headers.
Credentials travel in ``Authorization``, never in cookies, so a wildcard origin is safe.
"""

from __future__ import annotations

from typing import Final

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "TenantCors"]

ALLOWED_METHODS: Final = "GET, POST, DELETE, OPTIONS"
ALLOWED_HEADERS: Final = "authorization, content-type, x-request-id"
MAX_AGE: Final = "600"
_PREFIX: Final = "/tenants"
_ALWAYS: Final = (
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"x-request-id, retry-after"),
)
_PREFLIGHT: Final = (
    *_ALWAYS,
    (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
    (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
    (b"access-control-max-age", MAX_AGE.encode()),
    (b"vary", b"access-control-request-headers"),
    (b"content-length", b"0"),
)


def _is_tenant_path(path: str) -> bool:
    return path == _PREFIX or path.startswith(_PREFIX + "/")


def _is_preflight(scope: Scope) -> bool:
    if scope.get("method") != "OPTIONS":
        return False
    return any(name == b"access-control-request-method" for name, _ in scope["headers"])


class TenantCors:
    """ASGI wrapper adding CORS to the tenant routes and answering their preflights."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not _is_tenant_path(scope["path"]):
            await self._app(scope, receive, send)
            return
        if _is_preflight(scope):
            await send({"type": "http.response.start", "status": 204, "headers": list(_PREFLIGHT)})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in (b"access-control-allow-origin",)
                ]
                message = {**message, "headers": [*headers, *_ALWAYS]}
            await send(message)

        await self._app(scope, receive, cors_send)
