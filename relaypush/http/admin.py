"""Admin routes of the audit trail, for the operator's token only.

    GET /admin/events                    history: the filters and cursor of ``audit history``
    GET /admin/clients/{id}/state?at=…   a client's state at a position or a time
    POST /admin/clients/{id}/erase       erase a client (``audit erase``; docs/audit.md#privacy)

All require ``Authorization: Bearer <RELAYPUSH_ADMIN_TOKEN>`` (401 in the relay envelope
otherwise, and always while no admin token is configured). Bad parameters are a 400 whose
``fields`` name them (location ``query``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.types import Guard

from eventstore import EventLog
from relaypush.audit.errors import QueryError
from relaypush.audit.history import (
    DEFAULT_PAGE,
    MAX_PAGE,
    HistoryPage,
    HistoryQuery,
    history_page,
)
from relaypush.audit.state import ClientSnapshot, client_state_at, parse_at, parse_time
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.errors import ErrorInfo, FieldError, InvalidRequest
from relaypush.domain.ids import IdKind, validate_id
from relaypush.http.auth import TenantAuthorizer
from relaypush.http.errors import error_response
from relaypush.http.observe import request_id_of
from relaypush.http.openapi import (
    CLIENT_ID,
    CLIENT_IDS,
    MESSAGE_ID,
    TENANT_ID,
    body,
    documented,
    failed,
    query,
)
from relaypush.privacy import Sealer
from relaypush.service import ErasureNotConfigured, RelayService

__all__ = ["admin_route_handlers", "admin_token_guard"]

AnyRequest = Request[Any, Any, Any]


class EventsBody(msgspec.Struct, kw_only=True):
    """``GET /admin/events``: a page of history and the cursor of the next one."""

    status: str
    events: list[Any]
    next_cursor: int | None


class StateBody(msgspec.Struct, kw_only=True):
    """``GET /admin/clients/{id}/state``."""

    status: str
    state: ClientSnapshot


class Erasure(msgspec.Struct, kw_only=True):
    tenant_id: str
    client_id: str
    position: int
    unregistered: bool
    key_ids: list[str]


class EraseBody(msgspec.Struct, kw_only=True):
    """``POST /admin/clients/{id}/erase``: where ``client.erased`` landed and what it did."""

    status: str
    erased: Erasure


def admin_token_guard(admin_token: str | None) -> Guard:
    """A litestar guard: the request must carry ``Authorization: Bearer <admin_token>``
    (checked by :meth:`TenantAuthorizer.admin`, as the tenant routes' admin operations are)."""
    authorizer = TenantAuthorizer(admin_token=admin_token, jwt_secret=None)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        authorizer.admin(connection.headers)

    return guard


def _invalid(exc: QueryError) -> InvalidRequest:
    return InvalidRequest(fields=(FieldError(exc.field, exc.why, "query"),))


def _one(request: AnyRequest, name: str) -> str | None:
    """The value of query parameter ``name``, None when absent; 400 when given twice."""
    values = request.query_params.getall(name, [])
    if len(values) > 1:
        raise InvalidRequest(fields=(FieldError(name, "must be given at most once", "query"),))
    return values[0] if values else None


def _int(request: AnyRequest, name: str, default: int) -> int:
    value = _one(request, name)
    if value is None:
        return default
    digits = value.strip()
    if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        why = "must be a non-negative integer of up to 18 digits"
        raise InvalidRequest(fields=(FieldError(name, why, "query"),))
    return int(digits)


def _query_id(request: AnyRequest, name: str, kind: IdKind) -> str | None:
    """The id in query parameter ``name``, None when absent or empty; 400 naming it if bad."""
    value = _one(request, name)
    if value is None:
        return None
    return validate_id(value, field=name, location="query", kind=kind)


def _query(request: AnyRequest) -> HistoryQuery:
    params = request.query_params
    since, until = _one(request, "since"), _one(request, "until")
    types = [t for value in params.getall("type", []) for t in value.split(",") if t]
    try:
        return HistoryQuery(
            client=_query_id(request, "client", "client"),
            notification=_query_id(request, "notification", "message"),
            tenant=_query_id(request, "tenant", "tenant"),
            since=parse_time(since, field="since") if since else None,
            until=parse_time(until, field="until") if until else None,
            types=frozenset(types),
            after=_int(request, "after", 0),
            limit=_int(request, "limit", DEFAULT_PAGE),
        )
    except QueryError as exc:
        raise _invalid(exc) from None


def _json(body: msgspec.Struct) -> Response[bytes]:
    return Response(content=msgspec.json.encode(body), media_type=MediaType.JSON)


def admin_route_handlers(
    *,
    event_log: EventLog,
    admin_token: str | None,
    service: RelayService | None = None,
    rate_limit: Guard | None = None,
) -> Sequence[HTTPRouteHandler]:
    """The admin routes over ``event_log``, guarded by ``admin_token`` (after ``rate_limit``,
    when given, so that wrong tokens count too). With ``service``, history and state open
    personal fields with its sealer, and clients can be erased."""
    guards = [g for g in (rate_limit, admin_token_guard(admin_token)) if g is not None]
    sealer: Sealer | None = service.sealer if service is not None else None

    async def events(request: AnyRequest) -> Response[bytes]:
        """A page of history, oldest first."""
        page: HistoryPage = await history_page(event_log, _query(request), sealer=sealer)
        return _json(EventsBody(status="OK", events=page.events, next_cursor=page.next_cursor))

    async def client_state(request: AnyRequest) -> Response[bytes]:
        """A client's state at ``at`` (a position or an ISO 8601 time; default now)."""
        client_id = validate_id(
            request.path_params["id"], field="id", location="path", kind="client"
        )
        tenant_id = _query_id(request, "tenant", "tenant") or DEFAULT_TENANT
        at_text = _one(request, "at")
        try:
            at = parse_at(at_text) if at_text else None
        except QueryError as exc:
            raise _invalid(exc) from None
        snapshot = await client_state_at(event_log, tenant_id, client_id, at, sealer=sealer)
        return _json(StateBody(status="OK", state=snapshot))

    async def erase(request: AnyRequest) -> Response[bytes]:
        """Erase a client of ``tenant`` (default the default tenant)."""
        client_id = validate_id(
            request.path_params["id"], field="id", location="path", kind="client"
        )
        tenant_id = _query_id(request, "tenant", "tenant") or DEFAULT_TENANT
        if service is None:
            raise ErasureNotConfigured("no relay service")
        request_id = request_id_of(request.scope)
        try:
            done = await service.erase(tenant_id, client_id, request_id=request_id)
        except ErasureNotConfigured as exc:
            return error_response(503, errors=(ErrorInfo("erasure_not_configured", str(exc)),))
        erased = Erasure(
            tenant_id=tenant_id,
            client_id=client_id,
            position=done.position,
            unregistered=done.unregistered,
            key_ids=list(done.key_ids),
        )
        return _json(EraseBody(status="OK", erased=erased))

    unauthorized = failed("No admin token, or not the configured one")
    shape = failed("A bad parameter; `fields` names it")
    no_route = failed("No such route (an id holding '/' makes another path)")
    limited = failed("Over the per-address rate limit; see `Retry-After`")
    unavailable = failed("The event log is unreachable; retry")
    tenant = query("tenant", TENANT_ID, "The tenant (default: the default tenant)")
    text = Schema(type=OpenAPIType.STRING)
    events_operation = documented(
        queries=[
            query("client", CLIENT_ID, "Only this client's events"),
            query("notification", MESSAGE_ID, "Only this relay message id's events"),
            query("tenant", TENANT_ID, "Only this tenant's events"),
            query("since", text, "Recorded at or after this ISO 8601 time"),
            query("until", text, "Recorded at or before this ISO 8601 time"),
            query("type", text, "Event tags, comma-separated or repeated"),
            query("after", Schema(type=OpenAPIType.INTEGER, minimum=0), "The cursor"),
            query(
                "limit",
                Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=MAX_PAGE),
                f"Page size (default {DEFAULT_PAGE})",
            ),
        ]
    )
    state_operation = documented(
        ids=CLIENT_IDS,
        queries=[tenant, query("at", text, "A log position, or an ISO 8601 time (default now)")],
    )
    erase_operation = documented(ids=CLIENT_IDS, queries=[tenant])
    return [
        get(
            "/admin/events",
            name="admin_events",
            summary="Audit history",
            description="Events oldest first, filtered by `client`, `notification` (relay "
            "message id), `tenant`, `since` / `until` (ISO 8601, recorded time), `type` "
            "(repeatable or comma-separated tags); `after` is the cursor (a position) and "
            "`limit` the page size (1 to 1000, default 100). Device tokens are shown as "
            "fingerprints. `next_cursor` is null on the last page.",
            guards=guards,
            operation_class=events_operation,
            tags=["admin"],
            responses={
                200: body(EventsBody, "A page of history"),
                400: shape,
                401: unauthorized,
                429: limited,
                503: unavailable,
            },
        )(events),
        get(
            "/admin/clients/{id:str}/state",
            name="admin_client_state",
            summary="A client's state at a point in time",
            description="Folds the client's events up to `at` (a log position, or an ISO "
            "8601 time; default now) in `tenant` (default the default tenant): registered or "
            "not, provider, token fingerprint, notifications pending, delivered, failed and "
            "dropped.",
            guards=guards,
            tags=["admin"],
            operation_class=state_operation,
            responses={
                200: body(StateBody, "The client's state"),
                400: shape,
                401: unauthorized,
                404: no_route,
                429: limited,
                503: unavailable,
            },
        )(client_state),
        post(
            "/admin/clients/{id:str}/erase",
            name="admin_client_erase",
            summary="Erase a client",
            description="Unregisters the client of `tenant` (default the default tenant) if it "
            "is registered, destroys its key and appends `client.erased`: its device token and "
            "the content of its notifications become unreadable in the log and the read "
            "tables, while the history still shows its events. Answers where `client.erased` "
            "landed and the ids of the keys destroyed.",
            guards=guards,
            tags=["admin"],
            status_code=200,
            operation_class=erase_operation,
            responses={
                200: body(EraseBody, "Erased"),
                400: shape,
                401: unauthorized,
                404: no_route,
                429: limited,
                503: failed("Erasure is not configured, or the event log is unreachable"),
            },
        )(erase),
    ]
