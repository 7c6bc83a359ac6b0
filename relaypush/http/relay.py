"""The relay-facing routes: register, unregister and push, single- and multi-tenant.

Every route exists twice: ``/clients...`` for the default tenant and ``/{tenant_id}/clients...``.
Handlers read the raw body, so every field error is relaypush's own, and check in the order the
contract fixes: authentication (401), then shape (400), then state (202 for an unknown client,
200 for a duplicate). Errors are raised and turned into the envelope by
:mod:`relaypush.http.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, assert_never

from litestar import MediaType, Request, Response, delete, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.types import Guard

from eventstore.once import Once
from relaypush.auth.client_jwt import AUTHORIZATION_HEADER, DEFAULT_MAX_AGE, verify_client_jwt
from relaypush.auth.relay_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RelaySignatureVerifier,
)
from relaypush.config import DEFAULT_TENANT
from relaypush.domain.errors import DomainError, ErrorInfo, FieldError, Unauthorized
from relaypush.domain.ids import validate_id
from relaypush.domain.payload import parse_register, peek_object
from relaypush.http.envelope import OK_BODY, failed_body
from relaypush.http.headers import credential_header, verified_token
from relaypush.http.observe import request_id_of
from relaypush.http.openapi import (
    CLIENT_IDS,
    PUSH_OPERATION,
    REGISTER_OPERATION,
    documented,
    failed,
    ok,
)
from relaypush.service import Accepted, Dropped, Duplicate, Held, RelayService

__all__ = ["RelayContext", "accept_push", "relay_route_handlers"]

AnyRequest = Request[Any, Any, Any]

CLIENTS_PATHS: Final = ["/clients", "/{tenant_id:str}/clients"]
CLIENT_PATHS: Final = ["/clients/{id:str}", "/{tenant_id:str}/clients/{id:str}"]

_SUSPENDED_BODY: Final = failed_body(
    errors=(
        ErrorInfo(
            "tenant_suspended",
            "the tenant is suspended because its provider credentials were refused; the "
            "notification is recorded and held until the tenant is un-suspended or its "
            "deadline passes",
        ),
    )
)
_AUTH_REQUIRED: Final = FieldError(
    AUTHORIZATION_HEADER, "header is required: a relay JWT signed by the client's key", "header"
)


@dataclass(frozen=True, slots=True)
class RelayContext:
    """What the relay routes need, handed to them by dependency injection as ``relay``."""

    service: RelayService
    audience: str
    require_client_auth: bool
    verifier: RelaySignatureVerifier | None
    #: shared by all API processes; None when one process's own memory of signatures suffices
    replay_guard: Once | None = None
    #: the hosts a ``webpush`` client's subscription may point at (``RELAYPUSH_WEBPUSH_HOSTS``)
    webpush_hosts: tuple[str, ...] = ()
    #: how long a client JWT without ``exp`` is valid after its ``iat`` (seconds)
    client_jwt_max_age: float = DEFAULT_MAX_AGE


def _json(status: int, body: bytes = OK_BODY) -> Response[bytes]:
    return Response(content=body, status_code=status, media_type=MediaType.JSON)


def _tenant_of(request: AnyRequest) -> str:
    tenant_id = request.path_params.get("tenant_id")
    if tenant_id is None:
        return DEFAULT_TENANT
    return validate_id(tenant_id, field="tenant_id", location="path", kind="tenant")


def _client_of(request: AnyRequest) -> str:
    return validate_id(request.path_params["id"], field="id", location="path", kind="client")


def _claimed_client_id(body: bytes) -> str:
    """The ``client_id`` a register body names, or ``""`` when it names none."""
    obj = peek_object(body)
    value = obj.get("client_id") if obj is not None else None
    return value if isinstance(value, str) else ""


def _client_token(request: AnyRequest, relay: RelayContext) -> str | None:
    """The wallet's JWT when one is sent; refused when absent and client auth is required."""
    token = credential_header(request.headers, AUTHORIZATION_HEADER)
    if token:
        return token
    if relay.require_client_auth:
        raise Unauthorized(fields=(_AUTH_REQUIRED,))
    return None


async def register_client(
    request: AnyRequest, relay: NamedDependency[RelayContext]
) -> Response[bytes]:
    """Register or re-register a client (upsert)."""
    body = await request.body()
    token = _client_token(request, relay)
    if token is not None:
        claimed = _claimed_client_id(body)
        verified_token(
            lambda: verify_client_jwt(
                token,
                client_id=claimed,
                audience=relay.audience,
                max_age=relay.client_jwt_max_age,
            )
        )
    tenant_id = _tenant_of(request)
    registration = parse_register(body, webpush_hosts=relay.webpush_hosts)
    await relay.service.register(tenant_id, registration, request_id=request_id_of(request.scope))
    return _json(200)


async def unregister_client(
    request: AnyRequest, relay: NamedDependency[RelayContext]
) -> Response[bytes]:
    """Unregister a client; idempotent."""
    token = _client_token(request, relay)
    if token is not None:
        claimed = request.path_params["id"]
        verified_token(
            lambda: verify_client_jwt(
                token,
                client_id=claimed,
                audience=relay.audience,
                max_age=relay.client_jwt_max_age,
            )
        )
    tenant_id = _tenant_of(request)
    client_id = _client_of(request)
    await relay.service.unregister(tenant_id, client_id, request_id=request_id_of(request.scope))
    return _json(200)


async def _claim_signature(guard: Once, signature: str) -> None:
    """Refuse a signature another API process already accepted within the window."""
    if not await guard.claim(signature.lower()):
        raise Unauthorized(
            fields=(FieldError(SIGNATURE_HEADER, "signature already used (replayed)", "header"),)
        )


async def push_notification(
    request: AnyRequest, relay: NamedDependency[RelayContext]
) -> Response[bytes]:
    """Accept a push from the relay for delivery to one client."""
    status, body = await accept_push(
        relay,
        tenant_id=request.path_params.get("tenant_id"),
        client_id=request.path_params["id"],
        body=await request.body(),
        headers=request.headers,
        request_id=request_id_of(request.scope),
    )
    return _json(status, body)


async def accept_push(
    relay: RelayContext,
    *,
    tenant_id: str | None,
    client_id: str,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str,
) -> tuple[int, bytes]:
    """The push route's work, whichever way the request came in (the litestar route, or the
    fast path of :mod:`relaypush.http.fastpush`): the status and body to answer, or a domain
    error for the envelope. ``headers`` maps lower-case names to values; the path's ids are
    checked here."""
    verifier = relay.verifier
    signature: str | None = None
    if verifier is not None:
        signature = credential_header(headers, SIGNATURE_HEADER)
        timestamp = credential_header(headers, TIMESTAMP_HEADER)
        verifier.verify(signature, timestamp, body)
        if relay.replay_guard is not None and signature is not None:
            await _claim_signature(relay.replay_guard, signature)
    tenant = (
        DEFAULT_TENANT
        if tenant_id is None
        else validate_id(tenant_id, field="tenant_id", location="path", kind="tenant")
    )
    client = validate_id(client_id, field="id", location="path", kind="client")
    try:
        outcome = await relay.service.push(tenant, client, body, request_id=request_id)
    except DomainError:
        raise
    except Exception:
        # Nothing durable depends on this signature: let the relay retry with the same one.
        if verifier is not None and signature is not None:
            verifier.forget(signature)
            if relay.replay_guard is not None:
                await relay.replay_guard.release(signature.lower())
        raise
    match outcome:
        case Accepted():
            return 202, OK_BODY
        case Duplicate():
            return 200, OK_BODY
        case Held() | Dropped(reason="tenant_suspended"):
            return 202, _SUSPENDED_BODY
        case Dropped():
            return 202, OK_BODY
        case _:
            assert_never(outcome)


def relay_route_handlers(*, rate_limit: Guard) -> Sequence[HTTPRouteHandler]:
    """The relay routes; ``rate_limit`` guards register and unregister (never the push)."""
    shape = failed("Malformed request; `fields` names each bad field")
    unauthorized = failed("Authentication missing or wrong; `fields` names the header")
    too_large = failed("Body over the size limit")
    limited = failed("Over the per-address rate limit; see `Retry-After`")
    unavailable = failed("The event log is unreachable; see `Retry-After`. Safe to repeat")
    no_route = failed("No such route (an id holding '/' makes another path)")
    return [
        post(
            CLIENTS_PATHS,
            name="register_client",
            summary="Register a client",
            description="Registers the client's device token, or replaces it (upsert, never "
            "409). With `RELAYPUSH_REQUIRE_CLIENT_AUTH`, an `Authorization` header holding the "
            "wallet's relay JWT is required; when sent, it is always checked.",
            status_code=200,
            guards=[rate_limit],
            operation_class=REGISTER_OPERATION,
            tags=["clients"],
            responses={
                200: ok("Registered"),
                400: shape,
                401: unauthorized,
                404: no_route,
                413: too_large,
                429: limited,
                503: unavailable,
            },
        )(register_client),
        delete(
            CLIENT_PATHS,
            name="unregister_client",
            summary="Unregister a client",
            description="Forgets the client's device token. Idempotent: 200 whether or not "
            "the client was registered.",
            status_code=200,
            guards=[rate_limit],
            operation_class=documented(ids=CLIENT_IDS),
            tags=["clients"],
            responses={
                200: ok("Unregistered, or was not registered"),
                400: shape,
                401: unauthorized,
                404: no_route,
                413: too_large,
                429: limited,
                503: unavailable,
            },
        )(unregister_client),
        post(
            CLIENT_PATHS,
            name="push_notification",
            summary="Push a notification to a client",
            description="Called by the relay. When a relay key is configured, "
            "`X-Ed25519-Signature` and `X-Ed25519-Timestamp` must sign the body. 202: accepted "
            "for delivery (or dropped because the client is not registered, or with a FAILED "
            "body `tenant_suspended`); 200: the message id was already accepted for this "
            "client.",
            status_code=202,
            operation_class=PUSH_OPERATION,
            tags=["push"],
            responses={
                202: ok("Accepted for delivery, or dropped for an unknown client"),
                200: ok("Duplicate: already accepted, nothing is sent again"),
                400: shape,
                401: unauthorized,
                404: no_route,
                413: too_large,
                503: unavailable,
            },
        )(push_notification),
    ]
