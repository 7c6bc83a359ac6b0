"""The one place where exceptions become HTTP responses, always in the relay envelope.

    InvalidRequest               400  fields and errors as the domain named them
    Unauthorized                 401  fields name the header(s) at fault
    TenantNotFound               404  ``tenant_not_found``, field ``id`` in the path
    RateLimited                  429  Retry-After
    EventLogUnavailable          503  Retry-After; the request may be repeated with the same id
    IndexUnavailable             503  Retry-After; the deduplication index cannot be read
    ConcurrentUpdate             503  Retry-After
    TenantConflict               503  Retry-After
    CredentialStoreUnavailable   503  ``storage_unavailable``, Retry-After
    CredentialStorageNotConfigured  503  ``credential_storage_not_configured``
    litestar's HTTPException     its own status: 404 ``not_found``, 405 ``method_not_allowed``
                                 (with ``Allow``), 413 ``request_too_large``, ...
    any other exception          500 ``internal_error``, logged with its traceback

No framework page and no traceback ever reaches a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from eventstore.errors import EventLogUnavailable
from relaypush.domain.dedup import IndexUnavailable
from relaypush.domain.errors import ErrorInfo, FieldError, InvalidRequest, Unauthorized
from relaypush.domain.tenants import TenantNotFound
from relaypush.http.envelope import failed_body
from relaypush.http.ratelimit import RateLimited
from relaypush.service import ConcurrentUpdate
from relaypush.tenancy.errors import CredentialStorageNotConfigured, CredentialStoreUnavailable
from relaypush.tenancy.service import TenantConflict

__all__ = ["EXCEPTION_HANDLERS", "error_response", "response_for"]

log = structlog.get_logger(__name__)

#: Seconds a client is asked to wait when the event log is unreachable.
UNAVAILABLE_RETRY_AFTER: Final = 5
#: Seconds a client is asked to wait after losing every race on one client.
CONFLICT_RETRY_AFTER: Final = 1

_NAMES: Final[dict[int, tuple[str, str]]] = {
    400: ("bad_request", "the request is malformed"),
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "the route does not accept this method"),
    413: ("request_too_large", "the request body is too large"),
}

AnyRequest = Request[Any, Any, Any]


def error_response(
    status: int,
    *,
    errors: tuple[ErrorInfo, ...] = (),
    fields: tuple[FieldError, ...] = (),
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    """A failure envelope with ``status``."""
    return Response(
        content=failed_body(errors, fields),
        status_code=status,
        media_type=MediaType.JSON,
        headers=dict(headers) if headers else None,
    )


def _invalid_request(_: AnyRequest, exc: Exception) -> Response[bytes]:
    assert isinstance(exc, InvalidRequest)
    return error_response(400, errors=exc.errors, fields=exc.fields)


def _unauthorized(_: AnyRequest, exc: Exception) -> Response[bytes]:
    assert isinstance(exc, Unauthorized)
    errors = exc.errors or (ErrorInfo("unauthorized", "authentication is missing or wrong"),)
    return error_response(401, errors=errors, fields=exc.fields)


def _tenant_not_found(_: AnyRequest, exc: Exception) -> Response[bytes]:
    assert isinstance(exc, TenantNotFound)
    what = "no such tenant (never created, or deleted)"
    return error_response(
        404,
        errors=(ErrorInfo("tenant_not_found", what),),
        fields=(FieldError("id", what, "path"),),
    )


def _credentials_unavailable(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.warning("credential_store_unavailable", path=request.url.path, error=str(exc))
    what = "the credential store cannot be reached; retry"
    return error_response(
        503,
        errors=(ErrorInfo("storage_unavailable", what),),
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


def _credentials_not_configured(_: AnyRequest, exc: Exception) -> Response[bytes]:
    return error_response(503, errors=(ErrorInfo("credential_storage_not_configured", str(exc)),))


def _rate_limited(_: AnyRequest, exc: Exception) -> Response[bytes]:
    assert isinstance(exc, RateLimited)
    what = f"more than {exc.limit} requests a minute from this address; retry later"
    return error_response(
        429,
        errors=(ErrorInfo("rate_limited", what),),
        headers={"Retry-After": str(exc.retry_after)},
    )


def _unavailable(request: AnyRequest, exc: Exception) -> Response[bytes]:
    if isinstance(exc, IndexUnavailable):
        log.warning("dedup_index_unavailable", path=request.url.path, error=str(exc))
        what = "the database cannot be reached; repeating the request with the same id is safe"
    else:
        log.warning("event_log_unavailable", path=request.url.path, error=str(exc))
        what = "the event log cannot be reached; repeating the request with the same id is safe"
    return error_response(
        503,
        errors=(ErrorInfo("storage_unavailable", what),),
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


def _conflict(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.warning("concurrent_update", path=request.url.path, error=str(exc))
    what = (
        "the tenant was changed concurrently by other requests; retry"
        if isinstance(exc, TenantConflict)
        else "the client was changed concurrently by other requests; retry"
    )
    return error_response(
        503,
        errors=(ErrorInfo("concurrent_update", what),),
        headers={"Retry-After": str(CONFLICT_RETRY_AFTER)},
    )


def _http_exception(request: AnyRequest, exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status >= 500:
        return _internal(request, exc)
    name, description = _NAMES.get(status, ("request_refused", exc.detail or "refused"))
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size()
        description = f"the request body is over the limit of {limit} bytes"
        return error_response(
            413,
            errors=(ErrorInfo(name, description),),
            fields=(FieldError("body", description, "body"),),
        )
    headers = {"Allow": exc.headers["allow"]} if exc.headers and "allow" in exc.headers else None
    return error_response(status, errors=(ErrorInfo(name, description),), headers=headers)


def _internal(request: AnyRequest, exc: Exception) -> Response[bytes]:
    log.error(
        "unhandled_exception",
        method=request.method,
        path=request.url.path,
        exc_info=exc,
    )
    return error_response(
        500, errors=(ErrorInfo("internal_error", "an unexpected error occurred; it was logged"),)
    )


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    InvalidRequest: _invalid_request,
    Unauthorized: _unauthorized,
    TenantNotFound: _tenant_not_found,
    RateLimited: _rate_limited,
    EventLogUnavailable: _unavailable,
    IndexUnavailable: _unavailable,
    ConcurrentUpdate: _conflict,
    TenantConflict: _conflict,
    CredentialStoreUnavailable: _credentials_unavailable,
    CredentialStorageNotConfigured: _credentials_not_configured,
    HTTPException: _http_exception,
    Exception: _internal,
}


@dataclass(frozen=True, slots=True)
class _Url:
    path: str


@dataclass(frozen=True, slots=True)
class _Where:
    """What the handlers read of a request: its method and path (for their log lines)."""

    method: str
    url: _Url


def response_for(exc: Exception, *, method: str, path: str) -> Response[bytes]:
    """The response :data:`EXCEPTION_HANDLERS` give ``exc``, for code that answers outside
    litestar's routing (the push fast path, :mod:`relaypush.http.fastpush`)."""
    for kind in type(exc).__mro__:
        handler = EXCEPTION_HANDLERS.get(kind)
        if handler is not None:
            # the handlers read nothing of the request but its method and path
            return handler(cast(AnyRequest, _Where(method, _Url(path))), exc)
    raise exc
