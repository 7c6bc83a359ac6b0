"""Who may use the tenant routes: ``Authorization: Bearer`` with a tenant JWT or the admin token.

    tenant routes   Bearer <HS256 JWT, sub = the tenant's id, exp>   or   Bearer <admin token>
    admin routes    Bearer <admin token> only

The admin token (``RELAYPUSH_ADMIN_TOKEN``) opens every tenant; a tenant JWT (signed with
``RELAYPUSH_TENANT_JWT_SECRET``, see :mod:`relaypush.auth.tenant_jwt`) opens its own tenant only.
Tokens are compared in constant time. A refusal is ``Unauthorized`` (401 in the relay envelope)
with the ``Authorization`` header named in ``fields`` and what was wrong with it. With neither
setting configured, tenant routes refuse everyone.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from relaypush.auth.tenant_jwt import verify_tenant_jwt
from relaypush.domain.errors import FieldError, Unauthorized
from relaypush.domain.tenants import ADMIN, Caller
from relaypush.http.headers import credential_header, verified_token

__all__ = ["AUTHORIZATION_HEADER", "Principal", "TenantAuthorizer"]

AUTHORIZATION_HEADER: Final = "Authorization"

Principal = Literal["admin", "tenant"]


def _refuse(description: str) -> Unauthorized:
    return Unauthorized(fields=(FieldError(AUTHORIZATION_HEADER, description, "header"),))


@dataclass(frozen=True, slots=True)
class TenantAuthorizer:
    """Checks the bearer token of tenant and admin routes."""

    admin_token: str | None
    jwt_secret: str | None
    clock: Callable[[], float] = time.time

    def _bearer(self, headers: Mapping[str, str]) -> str:
        value = credential_header(headers, AUTHORIZATION_HEADER)
        if not value:
            what = "the admin token or a tenant JWT" if self.jwt_secret else "the admin token"
            raise _refuse(f"header is required: 'Bearer <{what}>'")
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _refuse("must be 'Bearer <token>'")
        return token

    def _is_admin(self, token: str) -> bool:
        expected = self.admin_token
        return bool(expected) and hmac.compare_digest(token.encode(), str(expected).encode())

    def tenant(self, headers: Mapping[str, str], tenant_id: str) -> Principal:
        """Who may act on ``tenant_id``: the admin, or that tenant; ``Unauthorized`` otherwise."""
        return "admin" if self.caller(headers, tenant_id).admin else "tenant"

    def caller(self, headers: Mapping[str, str], tenant_id: str) -> Caller:
        """As :meth:`tenant`, with when the tenant's JWT was issued (its ``iat``)."""
        if not self.admin_token and not self.jwt_secret:
            raise _refuse(
                "tenant routes are off: neither RELAYPUSH_ADMIN_TOKEN nor "
                "RELAYPUSH_TENANT_JWT_SECRET is set"
            )
        token = self._bearer(headers)
        if self._is_admin(token):
            return ADMIN
        if not self.jwt_secret:
            raise _refuse("not the admin token (tenant JWTs are off: no secret is set)")
        if token.count(".") != 2:
            raise _refuse("neither the admin token nor a tenant JWT")
        secret, now = self.jwt_secret, self.clock()
        claims = verified_token(
            lambda: verify_tenant_jwt(token, secret=secret, tenant_id=tenant_id, now=now)
        )
        issued = datetime.fromtimestamp(claims.iat, UTC) if claims.iat is not None else None
        return Caller(admin=False, issued_at=issued)

    def admin(self, headers: Mapping[str, str]) -> Principal:
        """The admin, or ``Unauthorized``: admin routes take the admin token only."""
        if not self.admin_token:
            raise _refuse("admin routes are off: no admin token is set")
        if not self._is_admin(self._bearer(headers)):
            raise _refuse("must be 'Bearer <admin token>': this route is for the operator only")
        return "admin"
