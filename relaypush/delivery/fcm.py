"""FCM HTTP v1 delivery: ``POST {fcm_url}/v1/projects/{project}/messages:send`` with OAuth2.

The body is :func:`relaypush.domain.provider_payload.fcm_message`, compact JSON. Over HTTP/2 (the
default) requests go through :class:`~relaypush.delivery.http2.Http2Pool`, relaypush's own lean
HTTP/2 client (a few connections, many streams on each); with ``http2=False`` through httpx over
HTTP/1.1 (one connection per request in flight), as for an ``http://`` base URL. The bearer token
comes from the service account's ``token_uri`` (:mod:`relaypush.delivery.google_oauth`): cached,
renewed off the event loop before it expires, and renewed once more when FCM answers 401 or
403, after which the send is tried again; a second refusal means the credentials are wrong.

What FCM answers is sorted by :data:`ERROR_CODES` (the ``errorCode`` of the ``FcmError`` detail
first, it is more specific than ``error.status``, then the status), then by :data:`HTTP_STATUSES`
when the body names no known code::

    {"error": {"code": 404, "message": "...", "status": "NOT_FOUND",
               "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "UNREGISTERED"}]}}

``INVALID_ARGUMENT`` is about the device token (the client is unregistered) when a
``google.rpc.BadRequest`` field violation names ``message.token`` or the message names the
registration token; otherwise it is about the message, which is rejected. Retries carry the
``Retry-After`` header (seconds or an HTTP date). Anything else is retried and logged.
"""

from __future__ import annotations

import enum
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypedDict, Unpack
from urllib.parse import quote, urlsplit

import httpx
import msgspec
import structlog
from google.oauth2 import service_account

from relaypush.config import ConfigError, Settings
from relaypush.delivery.google_oauth import ServiceAccountTokens, TokenUnavailable
from relaypush.delivery.http2 import Http2Error, Origin
from relaypush.delivery.http2_pool import Http2Pool
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Rejected,
    Retry,
    Target,
    TokenInvalid,
)
from relaypush.delivery.retry_after import retry_after
from relaypush.domain.events import NotificationAccepted
from relaypush.domain.provider_payload import fcm_message
from relaypush.logs import fingerprint
from relaypush.metrics import REGISTRY, Registry

__all__ = [
    "DEFAULT_HTTP2",
    "ERROR_CODES",
    "FCM_SCOPE",
    "HTTP_STATUSES",
    "UNKNOWN_ANSWER",
    "Action",
    "FcmOptions",
    "FcmProvider",
    "RefreshToken",
    "ServiceAccountError",
    "classify",
    "interpret",
]

log = structlog.get_logger(__name__)

FCM_SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
#: HTTP/2 by default: relaypush's own client costs a fraction of the client CPU per send of
#: httpx over HTTP/1.1 or HTTP/2 (docs/performance.md, "Provider clients").
DEFAULT_HTTP2: Final = True
_GOOGLE_HOSTS: Final = (".googleapis.com", ".google.com")
_encode: Final = msgspec.json.encode


class Action(enum.StrEnum):
    """What an FCM answer means for the send.

    ``REFRESH``: renew the OAuth token and send again; refused a second time, the credentials
    are wrong.
    """

    TOKEN_INVALID = enum.auto()
    TOKEN_FOREIGN = enum.auto()
    CREDENTIALS_INVALID = enum.auto()
    REFRESH = enum.auto()
    REJECTED = enum.auto()
    RETRY = enum.auto()


#: FCM error codes (``details[].errorCode``, else ``error.status``) and what they mean.
ERROR_CODES: Final[Mapping[str, Action]] = {
    "UNREGISTERED": Action.TOKEN_INVALID,
    "INVALID_ARGUMENT": Action.REJECTED,  # TOKEN_INVALID when it names the registration token
    # the token belongs to another Firebase project: that client's, never the tenant's, problem
    "SENDER_ID_MISMATCH": Action.TOKEN_FOREIGN,
    "THIRD_PARTY_AUTH_ERROR": Action.CREDENTIALS_INVALID,
    "APNS_AUTH_ERROR": Action.CREDENTIALS_INVALID,  # the older name of THIRD_PARTY_AUTH_ERROR
    "UNAUTHENTICATED": Action.REFRESH,
    "PERMISSION_DENIED": Action.REFRESH,
    "QUOTA_EXCEEDED": Action.RETRY,
    "RESOURCE_EXHAUSTED": Action.RETRY,
    "RATE_LIMIT_EXCEEDED": Action.RETRY,
    "UNAVAILABLE": Action.RETRY,
    "INTERNAL": Action.RETRY,
    "DEADLINE_EXCEEDED": Action.RETRY,
}

#: When the body names no known code (an HTML page from a proxy, say), the HTTP status decides.
HTTP_STATUSES: Final[Mapping[int, Action]] = {
    401: Action.REFRESH,
    403: Action.REFRESH,
    429: Action.RETRY,
    500: Action.RETRY,
    502: Action.RETRY,
    503: Action.RETRY,
    504: Action.RETRY,
}

_FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE: Final = "type.googleapis.com/google.rpc.BadRequest"
_MAX_MESSAGE: Final = 200
#: How the reason of a retry for an answer no table knows begins.
UNKNOWN_ANSWER: Final = "unknown answer "


class _FieldViolation(msgspec.Struct, kw_only=True):
    field: str = ""
    description: str = ""


class _Detail(msgspec.Struct, kw_only=True):
    type: str = msgspec.field(default="", name="@type")
    error_code: str | None = msgspec.field(default=None, name="errorCode")
    field_violations: list[_FieldViolation] = msgspec.field(
        default_factory=list, name="fieldViolations"
    )


class _Status(msgspec.Struct, kw_only=True):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[_Detail] = msgspec.field(default_factory=list)


class _ErrorBody(msgspec.Struct):
    error: _Status


class _Sent(msgspec.Struct):
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """FCM refused the bearer token: renew it and send once more (``reason`` if that fails)."""

    reason: str


def _error(body: bytes) -> _Status | None:
    try:
        return msgspec.json.decode(body, type=_ErrorBody).error
    except msgspec.DecodeError:
        return None


def _names_token(error: _Status) -> bool:
    for detail in error.details:
        if detail.type == _BAD_REQUEST_TYPE and any(
            v.field == "message.token" for v in detail.field_violations
        ):
            return True
    return "registration token" in error.message.lower()


def classify(status: int, body: bytes) -> tuple[Action | None, str]:
    """What an FCM error response means (None when nothing in the tables knows it), and why."""
    error = _error(body)
    codes = [d.error_code for d in (error.details if error else ()) if d.type == _FCM_ERROR_TYPE]
    codes += [error.status] if error else []
    code = next((c for c in codes if c and c in ERROR_CODES), None)
    action = ERROR_CODES[code] if code else HTTP_STATUSES.get(status)
    reason = f"{code or next((c for c in codes if c), 'HTTP')} ({status})"
    if error is not None and error.message:
        reason += f": {error.message[:_MAX_MESSAGE]}"
    if action is Action.REJECTED and error is not None and _names_token(error):
        action = Action.TOKEN_INVALID
    return action, reason


def interpret(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime
) -> Outcome | RefreshToken:
    """What one ``messages:send`` response means (``now`` resolves a dated ``Retry-After``)."""
    if status == 200:
        try:
            return Delivered(msgspec.json.decode(body, type=_Sent).name)
        except msgspec.DecodeError:
            return Delivered(None)
    action, reason = classify(status, body)
    match action:
        case Action.TOKEN_INVALID:
            return TokenInvalid(reason)
        case Action.TOKEN_FOREIGN:
            return TokenInvalid(reason, unregister_reason="token_foreign")
        case Action.CREDENTIALS_INVALID:
            return CredentialsInvalid(reason)
        case Action.REFRESH:
            return RefreshToken(reason)
        case Action.REJECTED:
            return Rejected(reason)
        case Action.RETRY | None:
            prefix = UNKNOWN_ANSWER if action is None else ""
            return Retry(prefix + reason, retry_after(headers.get("retry-after"), now=now))


class ServiceAccountError(ValueError):
    """A service-account JSON document that cannot be used."""


class FcmOptions(TypedDict, total=False):
    """Keyword options shared by :class:`FcmProvider` and its factories."""

    verify: str | Path | None
    http2: bool
    max_connections: int
    keepalive_expiry: float
    connect_timeout: float
    timeout: float
    pool_timeout: float
    token_refresh_margin: float
    clock: Callable[[], float]
    metrics: Registry


def _ssl_context(ca_file: str | Path | None) -> ssl.SSLContext | bool:
    return True if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


class FcmProvider:
    """Sends through FCM HTTP v1 for one Firebase project and one service account.

    ``credentials`` is a google-auth service-account ``Credentials`` with the FCM scope (see
    :meth:`from_service_account`). ``verify`` is a CA file for stand-ins (also used for the
    token endpoint). With ``http2`` (and an https base URL) requests share a few HTTP/2
    connections (at most ``max_connections``, a new one only when the others carry the
    server's ``MAX_CONCURRENT_STREAMS``) and ``timeout`` bounds each whole request, connecting
    included. Without, httpx sends over HTTP/1.1 with up to ``max_connections`` connections;
    ``timeout`` bounds each read and write, ``connect_timeout`` the connect and
    ``pool_timeout`` the wait for a connection.
    """

    def __init__(
        self,
        credentials: Any,
        project_id: str,
        *,
        base_url: str = "https://fcm.googleapis.com",
        verify: str | Path | None = None,
        http2: bool = DEFAULT_HTTP2,
        max_connections: int = 64,
        keepalive_expiry: float = 30.0,
        connect_timeout: float = 5.0,
        timeout: float = 10.0,
        pool_timeout: float = 10.0,
        token_refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: Registry = REGISTRY,
    ) -> None:
        self.project_id = project_id
        self._path = f"/v1/projects/{quote(project_id, safe='')}/messages:send"
        self._tokens = ServiceAccountTokens(
            credentials,
            verify=_ssl_context(verify),
            timeout=timeout,
            refresh_margin=token_refresh_margin,
            clock=clock,
            metrics=metrics,
        )
        self._timeout = timeout
        self._bearer = ("", b"")
        self._pool: Http2Pool | None = None
        self._client: httpx.AsyncClient | None = None
        base = base_url.rstrip("/")
        if http2 and base.startswith("https://"):
            origin = Origin.parse(base)
            context = ssl.create_default_context(cafile=str(verify) if verify else None)
            context.set_alpn_protocols(["h2"])
            self._pool = Http2Pool(
                origin, context, timeout=timeout, max_connections=max_connections
            )
            self._head = (
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":path", (origin.path + self._path).encode()),
                (b":authority", origin.authority.encode()),
                (b"content-type", b"application/json; charset=UTF-8"),
            )
        else:
            self._client = httpx.AsyncClient(
                base_url=base,
                http2=False,
                verify=_ssl_context(verify),
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                    keepalive_expiry=keepalive_expiry,
                ),
                timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=pool_timeout),
                headers={"content-type": "application/json; charset=UTF-8"},
            )

    @classmethod
    def from_service_account(
        cls,
        info: Mapping[str, Any],
        *,
        base_url: str = "https://fcm.googleapis.com",
        **options: Unpack[FcmOptions],
    ) -> FcmProvider:
        """A provider for the project of the service-account JSON ``info``.

        Raises :class:`ServiceAccountError` when ``info`` is not a usable service account.
        """
        project_id = info.get("project_id")
        token_uri = info.get("token_uri")
        if (
            info.get("type") != "service_account"
            or not isinstance(project_id, str)
            or not project_id
        ):
            raise ServiceAccountError("not a service account with a project_id")
        if not isinstance(token_uri, str) or not token_uri:
            raise ServiceAccountError("the service account has no token_uri")
        host = urlsplit(token_uri).hostname or ""
        # google-auth addresses the assertion to Google's token endpoint; anywhere else (a
        # stand-in, a proxy) the RFC 7523 audience is the token URL itself.
        claims = {} if host.endswith(_GOOGLE_HOSTS) else {"aud": token_uri}
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                dict(info), scopes=[FCM_SCOPE], additional_claims=claims
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ServiceAccountError(f"unusable service account: {exc}") from exc
        return cls(credentials, project_id, base_url=base_url, **options)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Unpack[FcmOptions]) -> FcmProvider | None:
        """The default tenant's provider, or None when ``fcm_credentials_file`` is not set.

        Raises ``ConfigError`` when the file cannot be read or is not a service account.
        """
        path = settings.fcm_credentials_file
        if path is None:
            return None
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read RELAYPUSH_FCM_CREDENTIALS_FILE {path}: {exc}") from exc
        if not isinstance(info, dict):
            raise ConfigError(f"RELAYPUSH_FCM_CREDENTIALS_FILE {path} is not a JSON object")
        if settings.fcm_ca_file is not None:
            options.setdefault("verify", settings.fcm_ca_file)
        try:
            return cls.from_service_account(info, base_url=settings.fcm_url, **options)
        except ServiceAccountError as exc:
            raise ConfigError(f"RELAYPUSH_FCM_CREDENTIALS_FILE {path}: {exc}") from exc

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        """Send ``notification`` to ``target.token``; never raises for what FCM answered."""
        body = _encode(fcm_message(notification, target.token))
        try:
            bearer = await self._tokens.get()
            outcome = await self._post(body, bearer, target)
            if isinstance(outcome, RefreshToken):
                bearer = await self._tokens.get(rejected=bearer)
                outcome = await self._post(body, bearer, target)
        except TokenUnavailable as exc:
            return exc.outcome
        if isinstance(outcome, RefreshToken):
            return CredentialsInvalid(outcome.reason)
        return outcome

    async def _post(self, body: bytes, bearer: str, target: Target) -> Outcome | RefreshToken:
        if self._pool is not None:
            answer = await self._post_h2(body, bearer)
        else:
            answer = await self._post_h1(body, bearer)
        if isinstance(answer, Retry):
            return answer
        status, headers, content = answer
        outcome = interpret(status, headers, content, now=datetime.now(UTC))
        if isinstance(outcome, Retry) and outcome.reason.startswith(UNKNOWN_ANSWER):
            log.warning(
                "fcm_unknown_answer",
                status=status,
                reason=outcome.reason,
                token=fingerprint(target.token),
                tenant_id=target.tenant_id,
            )
        return outcome

    async def _post_h2(
        self, body: bytes, bearer: str
    ) -> Retry | tuple[int, Mapping[str, str], bytes]:
        assert self._pool is not None
        if self._bearer[0] != bearer:
            self._bearer = (bearer, f"Bearer {bearer}".encode())
        headers = [*self._head, (b"authorization", self._bearer[1])]
        try:
            answer = await self._pool.request(headers, body)
        except TimeoutError:
            return Retry(f"timeout: no answer from FCM within {self._timeout:g} s")
        except Http2Error as exc:
            return Retry(f"connection: {type(exc).__name__}: {exc}")
        if answer.status == 200:
            return 200, {}, answer.body
        after = answer.headers.get(b"retry-after")
        headers_read = {"retry-after": after.decode("latin-1")} if after is not None else {}
        return answer.status, headers_read, answer.body

    async def _post_h1(
        self, body: bytes, bearer: str
    ) -> Retry | tuple[int, Mapping[str, str], bytes]:
        assert self._client is not None
        try:
            response = await self._client.post(
                self._path, content=body, headers={"authorization": f"Bearer {bearer}"}
            )
        except httpx.TimeoutException as exc:
            return Retry(f"timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return Retry(f"connection: {type(exc).__name__}: {exc}")
        return response.status_code, response.headers, response.content

    async def close(self) -> None:
        """Close the FCM and token endpoint connections."""
        if self._pool is not None:
            await self._pool.close()
        if self._client is not None:
            await self._client.aclose()
        self._tokens.close()
