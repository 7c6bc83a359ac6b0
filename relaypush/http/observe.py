"""One log line and the request metrics for every HTTP request, whatever its outcome.

:class:`RequestObserver` wraps the application's ASGI handler outside routing and error handling,
so 404s, 405s, 413s and 500s are seen with the status the client gets. It logs method, route
template (never the raw path, so ids stay out of metric labels), status, duration and request
id; never a body, a header value or a token. The request id is the client's ``X-Request-Id`` when
it is a short printable token, else a new one; it is put in the scope state for the handlers and
echoed in the response.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Final

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from relaypush.metrics import Registry

__all__ = ["REQUEST_ID_HEADER", "RequestObserver", "request_id_of"]

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER: Final = "X-Request-Id"
_REQUEST_ID_KEY: Final = b"x-request-id"
_STATE_KEY: Final = "request_id"
_VALID_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9_\-.:]{1,128}")
_UNMATCHED: Final = "unmatched"


def request_id_of(scope: Scope) -> str:
    """The request id the observer assigned to this request (a new one when unobserved)."""
    state = scope.get("state")
    value = state.get(_STATE_KEY) if state is not None else None
    return value if isinstance(value, str) else uuid.uuid4().hex


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == _REQUEST_ID_KEY:
            if _VALID_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestObserver:
    """ASGI wrapper: logs each HTTP request once and records its count and duration."""

    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        self._app = app
        self._requests = registry.counter(
            "relaypush_http_requests_total",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
        )
        self._duration = registry.histogram(
            "relaypush_http_request_duration_seconds",
            "HTTP request duration by route template",
            ("route",),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})[_STATE_KEY] = request_id
        id_header = (_REQUEST_ID_KEY, request_id.encode("ascii"))
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("path_template") or _UNMATCHED
            method = scope["method"]
            self._requests.inc(method=method, route=route, status=str(status))
            self._duration.observe(elapsed, route=route)
            log.info(
                "http_request",
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000.0, 3),
                request_id=request_id,
            )
