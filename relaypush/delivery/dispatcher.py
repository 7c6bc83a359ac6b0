"""The dispatcher: a durable consumer of accepted notifications that delivers them.

For each ``notification.accepted`` event it checks the notification is still owed (not already
delivered, not failed for good, not past its deadline, client still registered), sends it through
the client's provider, appends the outcome to the log and only then acks. Several dispatcher
processes share one durable consumer; a crash before the ack makes the event come back, and the
"already delivered" check keeps a redelivery from sending again once the outcome is recorded.
The client's token and the notification's personal content are opened with the
:class:`~relaypush.privacy.Sealer` (cached keys); when either was erased the notification fails
for good (``client_erased``) and nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from eventstore import ANY, Delivery, EventLog, EventLogUnavailable, WrongExpectedVersion
from relaypush.aggregates import TenantSuspensions, load_client
from relaypush.delivery.outcomes import (
    CredentialsInvalid,
    Delivered,
    Outcome,
    Provider,
    Rejected,
    Retry,
    Target,
    TokenInvalid,
)
from relaypush.delivery.registry import ProviderLookup, Unavailable, as_lookup
from relaypush.domain.events import (
    Cause,
    ClientUnregistered,
    Event,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    ProviderType,
    TenantSuspended,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import NOTIFICATION, notification_subject, subject_for
from relaypush.logs import fingerprint
from relaypush.metrics import REGISTRY, Registry
from relaypush.privacy import Sealer

__all__ = ["ACCEPTED_FILTER", "Dispatcher", "backoff"]

log = structlog.get_logger(__name__)

ACCEPTED_FILTER = (ANY, NOTIFICATION, ANY, ANY, "accepted")


def _new_id() -> str:
    return uuid.uuid4().hex


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0, rand: float = 0.5) -> float:
    """Seconds before attempt ``attempt + 1``: exponential with full jitter on half the span."""
    span = min(cap, base * 2 ** max(0, attempt - 1))
    jitter: float = random.random()  # noqa: S311 - jitter, not cryptography
    return float(span * (1 - rand) + span * rand * jitter)


async def _unless_stopped(
    work: Coroutine[Any, Any, list[Delivery]], stop: asyncio.Event
) -> list[Delivery]:
    """``work``'s result, or an empty list as soon as ``stop`` is set (``work`` is cancelled:
    events a cancelled fetch had taken come back after the ack wait)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return []


class Dispatcher:
    """Consumes accepted notifications and records what became of each."""

    def __init__(
        self,
        event_log: EventLog,
        providers: ProviderLookup | Mapping[str, Provider],
        *,
        deadline: float,
        concurrency: int = 64,
        durable: str = "dispatcher",
        send_timeout: float = 10.0,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Registry = REGISTRY,
        sealer: Sealer | None = None,
    ) -> None:
        """``retry_base`` and ``retry_cap`` bound the exponential backoff between attempts
        (seconds); a provider's Retry-After, when longer, wins. ``sealer`` opens sealed tokens
        and content (without it, sealed ones count as erased)."""
        self._log = event_log
        self._sealer = sealer or Sealer(None)
        self._providers = as_lookup(providers)
        self._deadline = timedelta(seconds=deadline)
        self._concurrency = concurrency
        self._durable = durable
        self._send_timeout = send_timeout
        self._clock = clock
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._suspensions = TenantSuspensions(event_log)
        self._inflight: set[asyncio.Task[None]] = set()
        self._sends = metrics.counter(
            "relaypush_deliveries_total",
            "Send attempts by provider and outcome",
            ["provider", "outcome"],
        )
        self._latency = metrics.histogram(
            "relaypush_delivery_latency_seconds", "Provider send latency", ["provider"]
        )
        self._accept_to_delivered = metrics.histogram(
            "relaypush_accept_to_delivered_seconds", "Time from acceptance to delivery"
        )
        self._attempts = metrics.histogram(
            "relaypush_delivery_attempts",
            "Attempts a notification took, observed when it is delivered or fails for good",
            buckets=(1, 2, 3, 5, 8, 13, 21),
        )
        self._inflight_gauge = metrics.gauge("relaypush_dispatcher_inflight", "Sends under way")
        self._lag = metrics.gauge(
            "relaypush_dispatcher_lag", "Accepted notifications not yet fetched"
        )

    async def run(self, stop: asyncio.Event, *, grace: float = 10.0) -> None:
        """Deliver until ``stop`` is set, then finish in-flight sends within ``grace`` seconds."""
        sub = await self._log.subscribe(
            self._durable,
            ACCEPTED_FILTER,
            ack_wait=self._send_timeout * 3,
            max_ack_pending=self._concurrency * 4,
        )
        log.info("dispatcher_started", durable=self._durable, concurrency=self._concurrency)
        last_lag = 0.0
        try:
            while not stop.is_set():
                free = self._concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    deliveries = await _unless_stopped(sub.fetch(min(free, 256), timeout=1.0), stop)
                except EventLogUnavailable:
                    log.warning("dispatcher_fetch_failed")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    continue
                for delivery in deliveries:
                    task = asyncio.create_task(self._handle(delivery))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                self._inflight_gauge.set(len(self._inflight))
                if time.monotonic() - last_lag > 5.0:
                    last_lag = time.monotonic()
                    self._lag.set(await sub.pending())
        except TimeoutError:
            pass
        finally:
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=grace)
            await sub.close()
            log.info("dispatcher_stopped", unfinished=len(self._inflight))

    async def _handle(self, delivery: Delivery) -> None:
        try:
            if await self._process(delivery):
                await delivery.ack()
        except (EventLogUnavailable, TimeoutError):
            log.warning("dispatch_deferred", position=delivery.event.position)
            await self._safe_nak(delivery, 1.0)
        except Exception:
            log.exception("dispatch_crashed", position=delivery.event.position)
            await self._safe_nak(delivery, backoff(delivery.num_delivered))

    @staticmethod
    async def _safe_nak(delivery: Delivery, delay: float) -> None:
        try:
            await delivery.nak(delay)
        except EventLogUnavailable:
            log.warning("nak_failed", position=delivery.event.position)

    async def _process(self, delivery: Delivery) -> bool:
        """Deliver one accepted notification; True when the event may be acked."""
        accepted = decode_event(delivery.event.data)
        if not isinstance(accepted, NotificationAccepted):
            return True
        t, c, m = accepted.tenant_id, accepted.client_id, accepted.message_id
        if await self._log.last(notification_subject(t, c, m, "delivered")) is not None:
            return True
        failed = await self._log.last(notification_subject(t, c, m, "failed"))
        if failed is not None:
            previous = decode_event(failed.data)
            if isinstance(previous, NotificationDeliveryFailed) and previous.permanent:
                return True
        attempt = delivery.num_delivered
        cause = Cause(message_id=m, position=delivery.event.position)
        now = self._clock()
        if now > accepted.occurred_at + self._deadline:
            await self._fail(accepted, None, attempt, "expired", cause)
            return True
        client = await load_client(self._log, t, c)
        if not client.registered or client.provider is None:
            await self._fail(accepted, None, attempt, "client_unregistered", cause)
            return True
        token = await self._sealer.open_token(t, c, client)
        accepted = await self._sealer.open(accepted)
        if token is None or accepted.sealed is not None:
            await self._fail(accepted, None, attempt, "client_erased", cause)
            return True
        provider = await self._providers.lookup(t, client.provider)
        if isinstance(provider, Unavailable) and provider.permanent:
            await self._fail(accepted, client.provider, attempt, provider.reason, cause)
            return True
        target = Target(tenant_id=t, client_id=c, provider=client.provider, token=token)
        if isinstance(provider, Unavailable):  # the tenant's credentials cannot be had now
            return await self._record(
                accepted,
                target,
                client.version,
                Retry(provider.reason),
                attempt,
                0.0,
                cause,
                delivery,
            )
        if await self._suspensions.suspended(t):
            # nothing goes out for a suspended tenant; what is owed waits for new credentials
            outcome: Outcome = Retry("tenant_suspended")
            return await self._record(
                accepted, target, client.version, outcome, attempt, 0.0, cause, delivery
            )
        started = time.monotonic()
        try:
            outcome = await asyncio.wait_for(
                provider.send(accepted, target), timeout=self._send_timeout
            )
        except TimeoutError:
            outcome = Retry("timeout")
        latency = time.monotonic() - started
        self._latency.observe(latency, provider=client.provider)
        self._sends.inc(provider=client.provider, outcome=type(outcome).__name__.lower())
        log.info(
            "delivery_attempt",
            tenant_id=t,
            client_id=c,
            message_id=m,
            provider=client.provider,
            token=fingerprint(token),
            attempt=attempt,
            outcome=type(outcome).__name__,
            latency_ms=round(latency * 1000, 2),
        )
        return await self._record(
            accepted, target, client.version, outcome, attempt, latency, cause, delivery
        )

    async def _record(
        self,
        accepted: NotificationAccepted,
        target: Target,
        client_version: int,
        outcome: Outcome,
        attempt: int,
        latency: float,
        cause: Cause,
        delivery: Delivery,
    ) -> bool:
        match outcome:
            case Delivered(provider_id=provider_id):
                event = NotificationDelivered(
                    event_id=_new_id(),
                    occurred_at=self._clock(),
                    tenant_id=accepted.tenant_id,
                    cause=cause,
                    client_id=accepted.client_id,
                    message_id=accepted.message_id,
                    provider=target.provider,
                    provider_id=provider_id,
                    attempt=attempt,
                    latency_ms=round(latency * 1000, 3),
                )
                try:
                    await self._append(event, expected_version=0)
                except WrongExpectedVersion:
                    log.warning("delivered_twice", message_id=accepted.message_id)
                self._attempts.observe(attempt)
                self._accept_to_delivered.observe(
                    (event.occurred_at - accepted.occurred_at).total_seconds()
                )
                return True
            case TokenInvalid(reason=reason):
                await self._fail(
                    accepted, target.provider, attempt, f"token_invalid: {reason}", cause
                )
                unregistered = ClientUnregistered(
                    event_id=_new_id(),
                    occurred_at=self._clock(),
                    tenant_id=accepted.tenant_id,
                    cause=cause,
                    client_id=accepted.client_id,
                    reason="token_invalid",
                )
                try:
                    await self._append(unregistered, expected_version=client_version)
                except WrongExpectedVersion:
                    log.info("client_changed_before_unregister", client_id=accepted.client_id)
                return True
            case CredentialsInvalid(reason=reason):
                await self._fail(
                    accepted, target.provider, attempt, f"credentials_invalid: {reason}", cause
                )
                if not await self._suspensions.suspended(accepted.tenant_id):
                    # several sends may fail at once: the first one suspends the tenant
                    self._suspensions.mark(accepted.tenant_id, True)
                    await self._append(
                        TenantSuspended(
                            event_id=_new_id(),
                            occurred_at=self._clock(),
                            tenant_id=accepted.tenant_id,
                            cause=cause,
                            reason=reason,
                        )
                    )
                return True
            case Rejected(reason=reason):
                await self._fail(accepted, target.provider, attempt, reason, cause)
                return True
            case Retry(reason=reason, after=after):
                delay = max(
                    after or 0.0, backoff(attempt, base=self._retry_base, cap=self._retry_cap)
                )
                now = self._clock()
                next_at = now + timedelta(seconds=delay)
                if next_at > accepted.occurred_at + self._deadline:
                    await self._fail(
                        accepted, target.provider, attempt, f"expired: {reason}", cause
                    )
                    return True
                await self._fail(
                    accepted,
                    target.provider,
                    attempt,
                    reason,
                    cause,
                    next_attempt_at=next_at,
                    now=now,
                )
                await delivery.nak(delay)
                return False

    async def _fail(
        self,
        accepted: NotificationAccepted,
        provider: ProviderType | None,
        attempt: int,
        reason: str,
        cause: Cause,
        *,
        next_attempt_at: datetime | None = None,
        now: datetime | None = None,
    ) -> None:
        if next_attempt_at is None:
            self._attempts.observe(attempt)
        event = NotificationDeliveryFailed(
            event_id=_new_id(),
            occurred_at=now or self._clock(),
            tenant_id=accepted.tenant_id,
            cause=cause,
            client_id=accepted.client_id,
            message_id=accepted.message_id,
            provider=provider,
            attempt=attempt,
            permanent=next_attempt_at is None,
            reason=reason,
            next_attempt_at=next_attempt_at,
        )
        await self._append(event)

    async def _append(self, event: Event, *, expected_version: int | None = None) -> None:
        await self._log.append(
            subject_for(event), encode_event(event), expected_version=expected_version
        )
