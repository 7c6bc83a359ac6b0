"""OAuth2 access tokens for a Google service account, fetched off the event loop and cached.

google-auth signs the JWT-bearer assertion and talks to the account's ``token_uri``; it needs a
transport, and :class:`HttpxRequest` gives it one over a synchronous ``httpx.Client`` (no
``requests``). :class:`ServiceAccountTokens` keeps one token for every send:

- a refresh runs in a worker thread (``asyncio.to_thread``), never on the event loop;
- a token is renewed ``refresh_margin`` seconds before it expires (at most half its lifetime);
- refreshes are single-flight: sends that find the token due, or that were refused with the same
  token, wait on one lock and share the one refresh;
- a failed refresh is remembered for ``failure_backoff`` seconds so a down token endpoint is not
  hammered, and a token that has not expired yet is still used meanwhile.

A refresh that fails raises :class:`TokenUnavailable` carrying the send's outcome: ``Retry`` for
what may pass (timeouts, 5xx), ``CredentialsInvalid`` for what will not (``invalid_grant``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import google.auth.exceptions
import google.auth.transport
import httpx
import structlog

from relaypush.delivery.outcomes import CredentialsInvalid, Retry
from relaypush.metrics import REGISTRY, Registry

__all__ = [
    "AccessToken",
    "HttpxRequest",
    "HttpxResponse",
    "ServiceAccountTokens",
    "TokenUnavailable",
]

log = structlog.get_logger(__name__)

#: Lifetime assumed when a token endpoint gives no ``expires_in`` (Google's is one hour).
DEFAULT_LIFETIME: Final = 3600.0


class HttpxResponse(google.auth.transport.Response):
    """An ``httpx.Response`` seen through google-auth's response interface."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxRequest(google.auth.transport.Request):
    """google-auth's transport interface over a synchronous ``httpx.Client``.

    Network failures become ``google.auth.exceptions.TransportError``, as the interface asks.
    """

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> HttpxResponse:
        try:
            response = self._client.request(
                method,
                url,
                content=body,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.HTTPError as exc:
            message = f"{type(exc).__name__}: {exc}"
            raise google.auth.exceptions.TransportError(message) from exc  # type: ignore[no-untyped-call]
        return HttpxResponse(response)


class TokenUnavailable(Exception):
    """No access token could be had; ``outcome`` is what the send that needed one comes to."""

    def __init__(self, outcome: Retry | CredentialsInvalid) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A bearer token and, on the provider's clock, when to renew it and when it expires."""

    value: str
    refresh_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Failure:
    outcome: Retry | CredentialsInvalid
    until: float


def refresh_outcome(exc: Exception) -> Retry | CredentialsInvalid:
    """What a failed refresh means: ``Retry`` unless the token endpoint refused for good.

    google-auth raises ``RefreshError`` for a refusal (``retryable`` for 5xx and the like),
    our transport ``TransportError``; anything else is an answer nobody expected: retried.
    """
    if isinstance(exc, google.auth.exceptions.TransportError):
        return Retry(f"oauth token endpoint unreachable: {exc}")
    if isinstance(exc, google.auth.exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return Retry(f"oauth token endpoint failed: {exc}")
        return CredentialsInvalid(f"oauth token refused: {exc}")
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return CredentialsInvalid(f"oauth token refused: {exc}")
    return Retry(f"oauth token endpoint answered unexpectedly: {type(exc).__name__}: {exc}")


class ServiceAccountTokens:
    """The current access token of one service account, renewed before it expires.

    ``credentials`` is a google-auth ``service_account.Credentials`` (anything with
    ``refresh(request)``, ``token`` and ``expiry``); ``verify`` checks the token endpoint's TLS
    certificate; ``clock`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        credentials: Any,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
        refresh_margin: float = 300.0,
        failure_backoff: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: Registry = REGISTRY,
    ) -> None:
        self._credentials = credentials
        self._http = httpx.Client(verify=verify, timeout=timeout)
        self._request = HttpxRequest(self._http)
        self._refresh_margin = refresh_margin
        self._failure_backoff = failure_backoff
        self._clock = clock
        self._lock = asyncio.Lock()
        self._current: AccessToken | None = None
        self._failure: _Failure | None = None
        self._refreshes = metrics.counter(
            "relaypush_oauth_token_refreshes_total",
            "Service-account access token refreshes by result",
            ["result"],
        )

    async def get(self, *, rejected: str | None = None) -> str:
        """A valid access token; ``rejected`` names one the service just refused.

        Raises :class:`TokenUnavailable` when no usable token can be had.
        """
        current = self._current
        if current is not None and current.value != rejected and self._clock() < current.refresh_at:
            return current.value
        async with self._lock:
            current = self._current
            now = self._clock()
            if current is not None and current.value != rejected and now < current.refresh_at:
                return current.value  # another send refreshed it while this one waited
            failure = self._failure
            if failure is not None and now < failure.until:
                return self._still_valid(current, rejected, now, failure.outcome)
            try:
                fresh = await asyncio.to_thread(self._fetch)
            except Exception as exc:  # whatever the exchange raised is this send's outcome
                outcome = refresh_outcome(exc)
                self._failure = _Failure(outcome, now + self._failure_backoff)
                self._refreshes.inc(result="retry" if isinstance(outcome, Retry) else "refused")
                log.warning("oauth_token_refresh_failed", reason=outcome.reason)
                return self._still_valid(current, rejected, now, outcome)
            self._current, self._failure = fresh, None
            self._refreshes.inc(result="ok")
            return fresh.value

    def close(self) -> None:
        """Close the token endpoint's connections."""
        self._http.close()

    def _still_valid(
        self,
        current: AccessToken | None,
        rejected: str | None,
        now: float,
        outcome: Retry | CredentialsInvalid,
    ) -> str:
        if current is not None and current.value != rejected and now < current.expires_at:
            return current.value
        raise TokenUnavailable(outcome)

    def _fetch(self) -> AccessToken:
        """Fetch a new token (blocking: runs in a worker thread)."""
        started = self._clock()
        self._credentials.refresh(self._request)
        token: str = self._credentials.token
        expiry: datetime | None = self._credentials.expiry
        lifetime = DEFAULT_LIFETIME
        if expiry is not None:
            lifetime = (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        expires_at = started + lifetime
        refresh_at = expires_at - min(self._refresh_margin, lifetime / 2)
        return AccessToken(value=token, refresh_at=refresh_at, expires_at=expires_at)
