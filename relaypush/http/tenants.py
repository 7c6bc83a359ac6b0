"""The tenant management routes, as the relay contract lists them.

    POST   /tenants                  {"id"}             200 {"url"}          (upsert)
    GET    /tenants/{id}                                200 tenant / 404
    DELETE /tenants/{id}                                200 {"success": true} (idempotent)
    POST   /tenants/{id}/apns        multipart          200 {"success": true} / 400
    POST   /tenants/{id}/fcm_v1      multipart          200 {"success": true} / 400
    POST   /tenants/{id}/fcm         legacy server key  410
    POST   /tenants/{id}/webpush     multipart          200 {"success": true} / 400
    POST   /tenants/{id}/unsuspend                      200 {"status":"OK","suspended":false} / 404
    DELETE /tenants/{id}/apns, /fcm_v1, /webpush        204
    GET    /tenants                  admin only         200 {"tenants": [ids]}

Checks run in the contract's order: authentication (401: a tenant JWT for this tenant or the
admin token, :mod:`relaypush.http.auth`), then the request's shape (400), then state (404 for an
unknown tenant), then whether the credentials work (400). Every route is rate-limited per
address and answers CORS (:mod:`relaypush.http.cors`). Errors are raised and put in the envelope
by :mod:`relaypush.http.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar import MediaType, Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.types import Guard

from relaypush.domain.errors import ErrorInfo, FieldError, InvalidRequest
from relaypush.domain.events import CredentialKind
from relaypush.domain.ids import validate_id
from relaypush.domain.payload import peek_object
from relaypush.domain.tenants import RESERVED_TENANT_IDS
from relaypush.http.auth import TenantAuthorizer
from relaypush.http.envelope import failed_body
from relaypush.http.observe import request_id_of
from relaypush.http.openapi import (
    APNS_FORM_SCHEMA,
    FCM_FORM_SCHEMA,
    TENANT_CREATE_SCHEMA,
    TENANT_IDS,
    WEBPUSH_FORM_SCHEMA,
    body,
    documented,
    failed,
    form_body,
    json_body,
)
from relaypush.tenancy.checks import FCM_FIELD, ApnsForm
from relaypush.tenancy.service import TenantService

__all__ = ["MAX_UPLOAD_SIZE", "TenantsContext", "tenant_route_handlers"]

AnyRequest = Request[Any, Any, Any]

#: Largest credential upload, in bytes: well under litestar's 1 MiB spool threshold, so an
#: uploaded key or certificate is parsed in memory and never written to a temporary file.
MAX_UPLOAD_SIZE: Final = 256 * 1024

_LEGACY_FCM: Final = failed_body(
    errors=(
        ErrorInfo(
            "legacy_fcm_retired",
            "Google shut the legacy FCM API (server keys) down in 2024; upload the Firebase "
            "service-account JSON to POST /tenants/{id}/fcm_v1 instead (FCM HTTP v1)",
        ),
    )
)


@dataclass(frozen=True, slots=True)
class TenantsContext:
    """What the tenant routes need, handed to them by dependency injection as ``tenants``."""

    service: TenantService
    auth: TenantAuthorizer


class CreatedBody(msgspec.Struct, frozen=True):
    url: str


class TenantBody(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    enabled_providers: list[str]
    apns_topic: str | None
    apns_type: str | None
    suspended: bool
    suspended_reason: str | None
    vapid_public_key: str | None


class SuccessBody(msgspec.Struct, frozen=True):
    success: bool = True


class UnsuspendedBody(msgspec.Struct, frozen=True, kw_only=True):
    status: str = "OK"
    suspended: bool = False


class TenantListBody(msgspec.Struct, frozen=True):
    tenants: list[str]


_SUCCESS: Final = msgspec.json.encode(SuccessBody())
_UNSUSPENDED: Final = msgspec.json.encode(UnsuspendedBody())


def _json(status: int, body: bytes) -> Response[bytes]:
    return Response(content=body, status_code=status, media_type=MediaType.JSON)


def _claimed_id(body: bytes) -> str:
    """The ``id`` a create body names, or ``""``: what a tenant JWT must be for."""
    obj = peek_object(body)
    value = obj.get("id") if obj is not None else None
    return value if isinstance(value, str) else ""


def _checked_id(value: object, location: str) -> str:
    tenant_id = validate_id(value, field="id", location=location, kind="tenant")
    if tenant_id in RESERVED_TENANT_IDS:
        raise InvalidRequest(
            fields=(
                FieldError(
                    "id",
                    f"{tenant_id!r} is reserved: its client routes would clash with the "
                    "server's own",
                    "body" if location == "body" else "path",
                ),
            )
        )
    return tenant_id


def _parse_create(body: bytes) -> str:
    obj = peek_object(body)
    if obj is None:
        raise InvalidRequest(fields=(FieldError("body", 'must be a JSON object {"id": ...}'),))
    if "id" not in obj:
        raise InvalidRequest(fields=(FieldError("id", "is required: the tenant's id"),))
    return _checked_id(obj["id"], "body")


def _authorized_id(request: AnyRequest, tenants: TenantsContext) -> str:
    """The path's tenant id, once the caller may act on it (401 first, then 400)."""
    raw = request.path_params["id"]
    tenants.auth.tenant(request.headers, raw)
    return _checked_id(raw, "path")


async def _parts(request: AnyRequest) -> dict[str, str | bytes]:
    """The form's parts by name (the first of each): file parts as bytes, fields as text."""
    try:
        form = await request.form()
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        raise InvalidRequest(
            fields=(
                FieldError("body", "must be multipart/form-data (curl -F) or a url-encoded form"),
            )
        ) from None
    parts: dict[str, str | bytes] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            await value.close()
            parts.setdefault(name, data)
        else:
            parts.setdefault(name, str(value))
    return parts


async def create_tenant(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Create a tenant (upsert)."""
    body = await request.body()
    caller = tenants.auth.caller(request.headers, _claimed_id(body))
    tenant_id = _parse_create(body)
    url = await tenants.service.create(
        tenant_id, request_id=request_id_of(request.scope), caller=caller
    )
    return _json(200, msgspec.json.encode(CreatedBody(url)))


async def get_tenant(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """A tenant's configuration and suspension."""
    tenant_id = _authorized_id(request, tenants)
    view = await tenants.service.view(tenant_id)
    body = TenantBody(
        url=view.url,
        enabled_providers=list(view.enabled_providers),
        apns_topic=view.apns_topic,
        apns_type=view.apns_type,
        suspended=view.suspended,
        suspended_reason=view.suspended_reason,
        vapid_public_key=view.vapid_public_key,
    )
    return _json(200, msgspec.json.encode(body))


async def delete_tenant(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Delete a tenant: its pushes and registrations are refused from now on."""
    tenant_id = _authorized_id(request, tenants)
    await tenants.service.delete(tenant_id, request_id=request_id_of(request.scope))
    return _json(200, _SUCCESS)


async def unsuspend_tenant(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Lift a suspension (idempotent): the tenant's held notifications go out."""
    tenant_id = _authorized_id(request, tenants)
    await tenants.service.unsuspend(tenant_id, request_id=request_id_of(request.scope))
    return _json(200, _UNSUSPENDED)


async def set_apns(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Set a tenant's APNs credentials (checked before they are stored)."""
    tenant_id = _authorized_id(request, tenants)
    form = ApnsForm.from_parts(await _parts(request))
    await tenants.service.set_apns(tenant_id, form, request_id=request_id_of(request.scope))
    return _json(200, _SUCCESS)


async def set_fcm_v1(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Set a tenant's FCM service account (checked before it is stored)."""
    tenant_id = _authorized_id(request, tenants)
    document = (await _parts(request)).get(FCM_FIELD)
    await tenants.service.set_fcm(tenant_id, document, request_id=request_id_of(request.scope))
    return _json(200, _SUCCESS)


async def set_webpush(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Set a tenant's VAPID key pair for Web Push (checked before it is stored)."""
    tenant_id = _authorized_id(request, tenants)
    parts = await _parts(request)
    await tenants.service.set_webpush(
        tenant_id,
        parts.get("vapid_private_key"),
        parts.get("subject"),
        request_id=request_id_of(request.scope),
    )
    return _json(200, _SUCCESS)


async def set_legacy_fcm(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """The legacy FCM server key: gone."""
    _authorized_id(request, tenants)
    return _json(410, _LEGACY_FCM)


async def _remove(request: AnyRequest, tenants: TenantsContext, kind: CredentialKind) -> None:
    tenant_id = _authorized_id(request, tenants)
    await tenants.service.remove(tenant_id, kind, request_id=request_id_of(request.scope))


async def remove_apns(request: AnyRequest, tenants: NamedDependency[TenantsContext]) -> None:
    """Remove a tenant's APNs credentials (204)."""
    await _remove(request, tenants, "apns")


async def remove_fcm_v1(request: AnyRequest, tenants: NamedDependency[TenantsContext]) -> None:
    """Remove a tenant's FCM service account (204)."""
    await _remove(request, tenants, "fcm_v1")


async def remove_webpush(request: AnyRequest, tenants: NamedDependency[TenantsContext]) -> None:
    """Remove a tenant's VAPID key pair (204)."""
    await _remove(request, tenants, "webpush")


async def list_tenants(
    request: AnyRequest, tenants: NamedDependency[TenantsContext]
) -> Response[bytes]:
    """Every tenant's id (admin token only)."""
    tenants.auth.admin(request.headers)
    ids = await tenants.service.list_ids()
    return _json(200, msgspec.json.encode(TenantListBody(ids)))


def tenant_route_handlers(*, rate_limit: Guard) -> Sequence[HTTPRouteHandler]:
    """The tenant routes, each guarded by the per-address ``rate_limit``."""
    shape = failed("Malformed request or credentials that do not work; `fields` says which")
    unauthorized = failed("No tenant JWT for this tenant and not the admin token")
    missing = failed("No such tenant (or no such route: an id holding '/' makes another path)")
    no_route = failed("No such route (an id holding '/' makes another path)")
    limited = failed("Over the per-address rate limit; see `Retry-After`")
    unavailable = failed("The event log or the credential store is unreachable; retry")
    too_large = failed("Body over the size limit")
    common = {400: shape, 401: unauthorized, 413: too_large, 429: limited, 503: unavailable}
    one = "/tenants/{id:str}"
    by_id = documented(ids=TENANT_IDS)
    success = body(SuccessBody, "Done")
    auth_note = (
        " Requires `Authorization: Bearer` with a tenant JWT (HS256, `sub` = the tenant id, "
        "`exp`) or the admin token."
    )
    return [
        post(
            "/tenants",
            name="create_tenant",
            summary="Create a tenant",
            description='Body `{"id": "<tenant id>"}`. Creates the tenant unless it exists '
            "(upsert) and answers the base URL of its client routes. A deleted tenant is "
            "created again by the admin token or a tenant JWT issued after the deletion."
            + auth_note,
            status_code=200,
            guards=[rate_limit],
            operation_class=documented(
                body=json_body(TENANT_CREATE_SCHEMA, "The tenant to create")
            ),
            tags=["tenants"],
            responses={200: body(CreatedBody, "Created, or existed already"), **common},
        )(create_tenant),
        get(
            "/tenants",
            name="list_tenants",
            summary="List tenants",
            description="Every tenant's id. Admin token only.",
            guards=[rate_limit],
            tags=["tenants"],
            responses={
                200: body(TenantListBody, "Every tenant that exists"),
                401: unauthorized,
                429: limited,
                503: unavailable,
            },
        )(list_tenants),
        get(
            one,
            name="get_tenant",
            summary="A tenant",
            description="Its URL, enabled providers, APNs topic and type, suspension, and the "
            "VAPID public key browsers subscribe with (`pushManager.subscribe`)." + auth_note,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={200: body(TenantBody, "The tenant"), **common, 404: missing},
        )(get_tenant),
        delete(
            one,
            name="delete_tenant",
            summary="Delete a tenant",
            description="Its credentials are destroyed, its pending deliveries stop and its "
            "client routes answer 400 from now on. Idempotent." + auth_note,
            status_code=200,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={200: success, **common, 404: no_route},
        )(delete_tenant),
        post(
            one + "/apns",
            name="set_apns",
            request_max_body_size=MAX_UPLOAD_SIZE,
            summary="Set APNs credentials",
            description="Multipart: `apns_topic` and either `apns_certificate` (.p12) with "
            "`apns_certificate_password`, or `apns_pkcs8_pem` (.p8) with `apns_key_id` and "
            "`apns_team_id`. Checked before they are stored; lifts a suspension." + auth_note,
            status_code=200,
            guards=[rate_limit],
            operation_class=documented(
                body=form_body(APNS_FORM_SCHEMA, "APNs credentials"), ids=TENANT_IDS
            ),
            tags=["tenants"],
            responses={200: success, **common, 404: missing},
        )(set_apns),
        post(
            one + "/fcm_v1",
            name="set_fcm_v1",
            request_max_body_size=MAX_UPLOAD_SIZE,
            summary="Set the FCM service account",
            description="Multipart: `credentials`, the service-account JSON. It must obtain an "
            "access token from its `token_uri` before it is stored; lifts a suspension."
            + auth_note,
            status_code=200,
            guards=[rate_limit],
            operation_class=documented(
                body=form_body(FCM_FORM_SCHEMA, "The FCM service account"), ids=TENANT_IDS
            ),
            tags=["tenants"],
            responses={200: success, **common, 404: missing},
        )(set_fcm_v1),
        post(
            one + "/webpush",
            name="set_webpush",
            request_max_body_size=MAX_UPLOAD_SIZE,
            summary="Set the VAPID key pair for Web Push",
            description="Multipart: `vapid_private_key` (a PEM P-256 private key) and `subject` "
            "(a `mailto:` or `https:` URL). Checked before it is stored; lifts a suspension."
            + auth_note,
            status_code=200,
            guards=[rate_limit],
            operation_class=documented(
                body=form_body(WEBPUSH_FORM_SCHEMA, "The VAPID key pair"), ids=TENANT_IDS
            ),
            tags=["tenants"],
            responses={200: success, **common, 404: missing},
        )(set_webpush),
        post(
            one + "/unsuspend",
            name="unsuspend_tenant",
            summary="Lift a suspension",
            description="Appends `tenant.unsuspended` when the tenant is suspended (nothing "
            "otherwise): the notifications held meanwhile are delivered, those past their "
            "deadline expire. The default tenant is `0000-0000-0000-0000`." + auth_note,
            status_code=200,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={
                200: body(UnsuspendedBody, "Not suspended (any more)"),
                **common,
                404: missing,
            },
        )(unsuspend_tenant),
        post(
            one + "/fcm",
            name="set_legacy_fcm",
            summary="Legacy FCM server key (gone)",
            description="Always 410: Google retired the legacy FCM API in 2024. Use `fcm_v1`.",
            status_code=410,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={410: failed("The legacy FCM API is retired"), **common, 404: no_route},
        )(set_legacy_fcm),
        delete(
            one + "/apns",
            name="remove_apns",
            summary="Remove APNs credentials",
            description="204 whether or not there were any." + auth_note,
            status_code=204,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={**common, 404: missing},
        )(remove_apns),
        delete(
            one + "/fcm_v1",
            name="remove_fcm_v1",
            summary="Remove the FCM service account",
            description="204 whether or not there was one." + auth_note,
            status_code=204,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={**common, 404: missing},
        )(remove_fcm_v1),
        delete(
            one + "/webpush",
            name="remove_webpush",
            summary="Remove the VAPID key pair",
            description="204 whether or not there was one." + auth_note,
            status_code=204,
            guards=[rate_limit],
            operation_class=by_id,
            tags=["tenants"],
            responses={**common, 404: missing},
        )(remove_webpush),
    ]
