"""Operational routes: ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Final

import structlog
from litestar import MediaType, Response, get
from litestar.handlers import HTTPRouteHandler

from relaypush.domain.errors import ErrorInfo
from relaypush.http.envelope import failed_body
from relaypush.http.openapi import failed, text
from relaypush.metrics import Registry

__all__ = ["METRICS_CONTENT_TYPE", "health_text", "operations_route_handlers", "package_version"]

log = structlog.get_logger(__name__)

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4"
NOT_READY_RETRY_AFTER: Final = 5


def package_version() -> str:
    """relaypush's installed version, ``0+unknown`` when it runs from an uninstalled tree."""
    try:
        return version("relaypush")
    except PackageNotFoundError:
        return "0+unknown"


def health_text() -> str:
    """The health body: ``OK, relaypush v<version>``."""
    return f"OK, relaypush v{package_version()}"


def operations_route_handlers(
    *, registry: Registry, ready: Callable[[], Awaitable[bool]] | None
) -> Sequence[HTTPRouteHandler]:
    """``/health`` (503 while ``ready`` says no) and ``/metrics`` from ``registry``."""
    healthy = health_text().encode()
    not_ready = failed_body(
        errors=(ErrorInfo("not_ready", "the server cannot reach its event log yet"),)
    )

    async def health() -> Response[bytes]:
        """Up: name and version; 503 in the envelope while not ready."""
        if ready is not None:
            try:
                is_ready = await ready()
            except Exception as exc:
                log.warning("readiness_check_failed", error=str(exc))
                is_ready = False
            if not is_ready:
                return Response(
                    content=not_ready,
                    status_code=503,
                    media_type=MediaType.JSON,
                    headers={"Retry-After": str(NOT_READY_RETRY_AFTER)},
                )
        return Response(content=healthy, media_type=MediaType.TEXT)

    async def metrics() -> Response[bytes]:
        """Prometheus text exposition of every metric."""
        return Response(content=registry.render().encode(), media_type=METRICS_CONTENT_TYPE)

    return [
        get(
            "/health",
            name="health",
            summary="Health",
            description="`OK, relaypush v<version>` as text; 503 in the envelope while the "
            "server is not ready.",
            tags=["operations"],
            media_type=MediaType.TEXT,
            responses={
                200: text("Up: `OK, relaypush v<version>`"),
                503: failed("Not ready; see `Retry-After`"),
            },
        )(health),
        get(
            "/metrics",
            name="metrics",
            summary="Prometheus metrics",
            description="Request counts and durations, appended events by type, and more, in "
            "the Prometheus text format 0.0.4.",
            tags=["operations"],
            media_type=METRICS_CONTENT_TYPE,
            responses={200: text("The metrics", METRICS_CONTENT_TYPE)},
        )(metrics),
    ]
