"""The service-account token cache: single-flight refreshes, renewal margin, failures.

The credentials are a fake with google-auth's shape (``refresh(request)``, ``token``,
``expiry``) and the clock is the test's, so nothing here touches the network or waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import google.auth.exceptions
import httpx
import pytest

from relaypush.delivery.google_oauth import (
    HttpxRequest,
    ServiceAccountTokens,
    TokenUnavailable,
)
from relaypush.delivery.outcomes import CredentialsInvalid, Retry
from relaypush.metrics import Registry


class FakeCredentials:
    """Issues ``tok-1``, ``tok-2``, ... living ``lifetime`` seconds; or raises ``error``."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.refreshes = 0
        self.error: Exception | None = None
        self.token: str | None = None
        self.expiry: datetime | None = None
        self.threads: set[int] = set()

    def refresh(self, request: object) -> None:
        self.threads.add(threading.get_ident())
        self.refreshes += 1
        if self.error is not None:
            raise self.error
        self.token = f"tok-{self.refreshes}"
        self.expiry = (datetime.now(UTC) + timedelta(seconds=self.lifetime)).replace(tzinfo=None)


def refresh_error(message: str, *, retryable: bool = False) -> Exception:
    """What google-auth raises when the token endpoint refuses."""
    return google.auth.exceptions.RefreshError(message, retryable=retryable)  # type: ignore[no-untyped-call]


def transport_error(message: str) -> Exception:
    """What our transport raises when the token endpoint cannot be reached."""
    return google.auth.exceptions.TransportError(message)  # type: ignore[no-untyped-call]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="clock")
def fx_clock() -> Clock:
    return Clock()


@pytest.fixture(name="creds")
def fx_creds() -> FakeCredentials:
    return FakeCredentials()


@pytest.fixture(name="tokens")
def fx_tokens(creds: FakeCredentials, clock: Clock) -> Iterator[ServiceAccountTokens]:
    tokens = ServiceAccountTokens(
        creds, refresh_margin=300.0, failure_backoff=5.0, clock=clock, metrics=Registry()
    )
    yield tokens
    tokens.close()


async def test_first_use_fetches_off_the_event_loop_and_later_uses_reuse(
    tokens: ServiceAccountTokens, creds: FakeCredentials
) -> None:
    assert await tokens.get() == "tok-1"
    assert await tokens.get() == "tok-1"
    assert creds.refreshes == 1
    assert threading.get_ident() not in creds.threads


async def test_concurrent_first_uses_share_one_refresh(
    tokens: ServiceAccountTokens, creds: FakeCredentials
) -> None:
    got = await asyncio.gather(*(tokens.get() for _ in range(50)))
    assert set(got) == {"tok-1"}
    assert creds.refreshes == 1


async def test_concurrent_rejections_of_one_token_share_one_refresh(
    tokens: ServiceAccountTokens, creds: FakeCredentials
) -> None:
    await tokens.get()
    got = await asyncio.gather(*(tokens.get(rejected="tok-1") for _ in range(50)))
    assert set(got) == {"tok-2"}
    assert creds.refreshes == 2


async def test_a_rejection_of_an_older_token_does_not_refresh_again(
    tokens: ServiceAccountTokens, creds: FakeCredentials
) -> None:
    await tokens.get()
    await tokens.get(rejected="tok-1")
    assert await tokens.get(rejected="tok-1") == "tok-2"
    assert creds.refreshes == 2


async def test_renewed_margin_seconds_before_expiry(
    tokens: ServiceAccountTokens, creds: FakeCredentials, clock: Clock
) -> None:
    await tokens.get()
    clock.now += 3600 - 300 - 1
    assert await tokens.get() == "tok-1"
    clock.now += 1
    assert await tokens.get() == "tok-2"


async def test_short_lived_tokens_are_renewed_at_half_their_life(
    tokens: ServiceAccountTokens, creds: FakeCredentials, clock: Clock
) -> None:
    creds.lifetime = 100.0
    await tokens.get()
    clock.now += 49
    assert await tokens.get() == "tok-1"
    clock.now += 1
    assert await tokens.get() == "tok-2"


@pytest.mark.parametrize(
    ("error", "outcome_type"),
    [
        (refresh_error("invalid_grant: bad signature"), CredentialsInvalid),
        (refresh_error("server_error", retryable=True), Retry),
        (transport_error("ConnectError: refused"), Retry),
        (TypeError("string indices must be integers"), Retry),  # a 200 that is not JSON
    ],
)
async def test_a_failed_first_refresh_is_the_sends_outcome(
    tokens: ServiceAccountTokens,
    creds: FakeCredentials,
    error: Exception,
    outcome_type: type[object],
) -> None:
    creds.error = error
    with pytest.raises(TokenUnavailable) as caught:
        await tokens.get()
    assert isinstance(caught.value.outcome, outcome_type)


async def test_a_failure_is_remembered_for_the_backoff_then_tried_again(
    tokens: ServiceAccountTokens, creds: FakeCredentials, clock: Clock
) -> None:
    creds.error = transport_error("down")
    results = await asyncio.gather(*(tokens.get() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, TokenUnavailable) for r in results)
    assert creds.refreshes == 1
    clock.now += 4.9
    with pytest.raises(TokenUnavailable):
        await tokens.get()
    assert creds.refreshes == 1
    creds.error = None
    clock.now += 0.1
    assert await tokens.get() == "tok-2"


async def test_a_due_token_that_has_not_expired_outlives_a_failed_refresh(
    tokens: ServiceAccountTokens, creds: FakeCredentials, clock: Clock
) -> None:
    await tokens.get()
    creds.error = transport_error("down")
    clock.now += 3500
    assert await tokens.get() == "tok-1"
    clock.now += 100
    with pytest.raises(TokenUnavailable):
        await tokens.get()


async def test_a_rejected_token_is_not_used_when_the_refresh_fails(
    tokens: ServiceAccountTokens, creds: FakeCredentials
) -> None:
    await tokens.get()
    creds.error = refresh_error("invalid_grant")
    with pytest.raises(TokenUnavailable) as caught:
        await tokens.get(rejected="tok-1")
    assert isinstance(caught.value.outcome, CredentialsInvalid)


def test_httpx_request_speaks_google_auths_transport_interface() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"x-a": "1"}, content=b'{"access_token": "t"}')

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        response = HttpxRequest(client)(
            "https://oauth.test/token",
            method="POST",
            body=b"grant_type=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert (response.status, response.headers["x-a"], response.data) == (
        200,
        "1",
        b'{"access_token": "t"}',
    )
    assert seen[0].method == "POST"
    assert seen[0].content == b"grant_type=x"
    assert seen[0].headers["content-type"] == "application/x-www-form-urlencoded"


def test_httpx_request_turns_network_errors_into_transport_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(google.auth.exceptions.TransportError, match="ConnectError"),
    ):
        HttpxRequest(client)("https://oauth.test/token", method="POST")
