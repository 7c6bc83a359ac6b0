"""The dispatcher: a durable consumer of accepted notifications that delivers them.

For each ``notification.accepted`` event it loads what it needs, asks the delivery domain
(:mod:`relaypush.domain.delivery`) whether to send, sends through the client's provider, appends
what the domain says the answer means, and only then acknowledges. Several dispatcher processes
share one durable consumer.

What a notification's history holds is read only when the event comes back (the consumer's
delivery count says it was handed out before): a first delivery has nothing recorded yet, so the
happy path is one read (the client) and one append (``notification.delivered``, with an
idempotency key derived from the notification, so that two dispatchers racing record it once).
A redelivered event reads the client's outcome subjects after the accepted event and folds them,
so nothing is sent again once ``delivered`` or a permanent failure is recorded.

A send that takes long keeps the event in progress with the log, so no other dispatcher takes it
meanwhile; once the provider took a notification, a failure to record ``delivered`` retries the
record, never the send. The client's token and the notification's personal content are opened
with the :class:`~relaypush.privacy.Sealer` (cached keys); when either was erased the
notification fails for good (``client_erased``). An outage of the log never ends the dispatcher:
it says so once, waits and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog

from eventstore import (
    ANY,
    Delivery,
    EventLog,
    EventLogUnavailable,
    RecordedEvent,
    SubjectFilter,
    Subscription,
    WrongExpectedVersion,
)
from relaypush.aggregates import TenantStatuses, load_client
from relaypush.config import DEFAULT_TENANT
from relaypush.delivery.outcomes import Outcome, Provider, Retry, Target
from relaypush.delivery.registry import ProviderLookup, Unavailable, as_lookup
from relaypush.domain.delivery import (
    Append,
    GiveUp,
    Hold,
    NotificationState,
    Recording,
    Send,
    Skip,
    decide_attempt,
    decide_hold,
    decide_outcome,
    evolve,
    failure,
)
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.events import (
    Cause,
    NotificationAccepted,
    NotificationDelivered,
    NotificationDeliveryFailed,
    ProviderType,
    TenantSuspended,
    decode_event,
    encode_event,
)
from relaypush.domain.provider_payload import check_payload_size
from relaypush.domain.streams import (
    NOTIFICATION,
    is_legacy_notification_subject,
    legacy_notification_subject,
    notification_subject,
    subject_for,
)
from relaypush.domain.tenants import CREDENTIAL_KIND, TenantState
from relaypush.logs import fingerprint
from relaypush.metrics import REGISTRY, Registry
from relaypush.privacy import Sealer

__all__ = ["ACCEPTED_FILTERS", "Dispatcher", "backoff"]

log = structlog.get_logger(__name__)

ACCEPTED_FILTERS: Final[list[SubjectFilter]] = [
    (ANY, NOTIFICATION, ANY, "accepted"),
    (ANY, NOTIFICATION, ANY, ANY, "accepted"),  # logs written before the per-client subjects
]
"""What the dispatcher consumes: every client's accepted notifications."""

OUTAGE_BACKOFF: Final = (0.5, 10.0)
"""Seconds between attempts while the log is unreachable: doubling from the first to the second."""
RECORD_RETRY: Final = (0.2, 5.0)
"""Seconds between attempts at recording a delivery the provider already took."""


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
    # whatever the cancelled fetch ends with (the log may close under it) is of no interest
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return []


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


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
        hold_recheck: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Registry = REGISTRY,
        sealer: Sealer | None = None,
        tenants: TenantStatuses | None = None,
        default_fingerprints: Mapping[ProviderType, str] | None = None,
        record_retry: tuple[float, float] = RECORD_RETRY,
    ) -> None:
        """``retry_base`` and ``retry_cap`` bound the exponential backoff between attempts
        (seconds); a provider's Retry-After, when longer, wins. ``hold_recheck``: the
        longest wait between two looks at a notification held for its suspended tenant (the
        first comes after about a second, each next after twice as long). ``sealer`` opens
        sealed tokens and content (without it, sealed ones count as erased). ``tenants`` is the
        process's tenant cache (one is made when none is given). ``default_fingerprints`` name
        the default tenant's credentials per client type (from the settings), recorded with a
        suspension so that a start with changed settings can lift it. ``record_retry`` bounds
        the wait between attempts at recording a delivery the provider took (seconds)."""
        self._log = event_log
        self._sealer = sealer or Sealer(None)
        self._providers = as_lookup(providers)
        self._deadline = timedelta(seconds=deadline)
        self._concurrency = concurrency
        self._durable = durable
        self._send_timeout = send_timeout
        self._ack_wait = send_timeout * 3
        self._clock = clock
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._hold_recheck = hold_recheck
        self._tenants = tenants or TenantStatuses(event_log)
        self._default_fingerprints = dict(default_fingerprints or {})
        self._record_retry = record_retry
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
        self._held = metrics.counter(
            "relaypush_notifications_held_total",
            "Notifications held because their tenant is suspended, counted when first held",
        )

    async def run(self, stop: asyncio.Event, *, grace: float = 10.0) -> None:
        """Deliver until ``stop`` is set, then finish in-flight sends within ``grace`` seconds.
        The log being unreachable, however long, is waited out."""
        sub = await self._subscribe(stop)
        if sub is None:
            return
        log.info("dispatcher_started", durable=self._durable, concurrency=self._concurrency)
        outage: _Outage | None = None
        last_lag = 0.0
        try:
            while not stop.is_set():
                free = self._concurrency - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    deliveries = await _unless_stopped(sub.fetch(min(free, 256), timeout=1.0), stop)
                    if time.monotonic() - last_lag > 5.0:
                        last_lag = time.monotonic()
                        self._lag.set(await sub.pending())
                except EventLogUnavailable as exc:
                    outage = outage or _Outage("dispatcher", str(exc))
                    await _wait(stop, outage.next_delay())
                    continue
                if outage is not None:
                    outage.over()
                    outage = None
                for delivery in deliveries:
                    task = asyncio.create_task(self._handle(delivery))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                self._inflight_gauge.set(len(self._inflight))
        finally:
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=grace)
            await sub.close()
            log.info("dispatcher_stopped", unfinished=len(self._inflight))

    async def _subscribe(self, stop: asyncio.Event) -> Subscription | None:
        """The durable subscription, waiting for the log as long as it takes (None: stopped)."""
        outage: _Outage | None = None
        while not stop.is_set():
            try:
                # no bound on what is handed out and not acked: notifications waiting for a
                # retry or held for a suspended tenant stay with the log, and must not keep
                # anyone else's from being fetched (the dispatcher bounds what it works on)
                sub = await self._log.subscribe(
                    self._durable,
                    ACCEPTED_FILTERS,
                    ack_wait=self._ack_wait,
                    max_ack_pending=-1,
                )
            except EventLogUnavailable as exc:
                outage = outage or _Outage("dispatcher", str(exc))
                await _wait(stop, outage.next_delay())
                continue
            if outage is not None:
                outage.over()
            return sub
        return None

    async def _handle(self, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        except (EventLogUnavailable, TimeoutError) as exc:
            log.warning("dispatch_deferred", position=delivery.event.position, error=str(exc))
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

    async def _process(self, delivery: Delivery) -> None:
        """Deliver one accepted notification, or record why not; settles ``delivery``."""
        accepted = decode_event(delivery.event.data)
        if not isinstance(accepted, NotificationAccepted):
            await delivery.ack()
            return
        t, c = accepted.tenant_id, accepted.client_id
        cause = Cause(message_id=accepted.message_id, position=delivery.event.position)
        state = await self._state(accepted, delivery)
        client = await load_client(self._log, t, c)
        tenant = await self._tenants.get(t)
        now = self._clock()
        decision = decide_attempt(
            state,
            accepted,
            now=now,
            deadline=self._deadline,
            client_registered=client.registered and client.provider is not None,
            tenant_suspended=tenant.suspended,
        )
        match decision:
            case Skip():
                await delivery.ack()
                return
            case GiveUp(reason=reason):
                await self._give_up(accepted, state.attempts, None, reason, cause, delivery)
                return
            case Hold():
                if not state.held:
                    self._held.inc()
                recording = decide_hold(
                    state,
                    accepted,
                    recheck=self._recheck(delivery),
                    event_id=_new_id(),
                    now=now,
                    cause=cause,
                )
                await self._apply(recording, delivery)
                return
            case Send(attempt=attempt):
                pass
        assert client.provider is not None
        token = await self._sealer.open_token(t, c, client)
        opened = await self._sealer.open(accepted)
        if token is None or opened.sealed is not None:
            await self._give_up(accepted, state.attempts, None, "client_erased", cause, delivery)
            return
        try:  # the client may have changed provider since the push was accepted
            check_payload_size(opened, client.provider)
        except InvalidRequest as refused:
            reason = "; ".join(e.description for e in refused.errors) or "payload_too_large"
            await self._give_up(
                accepted,
                state.attempts,
                client.provider,
                f"payload_too_large: {reason}",
                cause,
                delivery,
            )
            return
        provider = await self._providers.lookup(t, client.provider)
        if isinstance(provider, Unavailable) and provider.permanent:
            await self._give_up(
                accepted, state.attempts, client.provider, provider.reason, cause, delivery
            )
            return
        target = Target(tenant_id=t, client_id=c, provider=client.provider, token=token)
        latency = 0.0
        if isinstance(provider, Unavailable):  # the tenant's credentials cannot be had now
            outcome: Outcome = Retry(provider.reason)
        else:
            outcome, latency = await self._send(provider, opened, target, attempt, delivery)
        recording = decide_outcome(
            outcome,
            accepted,
            provider=client.provider,
            attempt=attempt,
            latency=latency,
            client_version=client.version,
            tenant_version=tenant.version,
            tenant_suspended=tenant.suspended,
            retry_delay=backoff(attempt, base=self._retry_base, cap=self._retry_cap),
            hold_recheck=self._recheck(delivery),
            deadline=self._deadline,
            new_id=_new_id(),
            second_id=_new_id(),
            now=self._clock(),
            cause=cause,
            credentials_fingerprint=self._fingerprint(t, client.provider, tenant),
        )
        await self._apply(recording, delivery)

    def _fingerprint(
        self, tenant_id: str, provider: ProviderType, tenant: TenantState
    ) -> str | None:
        """The fingerprint of the credentials a send to ``provider`` uses."""
        if tenant_id == DEFAULT_TENANT:
            return self._default_fingerprints.get(provider)
        kind = CREDENTIAL_KIND.get(provider)
        return tenant.fingerprint(kind) if kind is not None else None

    def _recheck(self, delivery: Delivery) -> float:
        """Seconds before a held notification is looked at again: from about a second, doubling
        with each look, up to ``hold_recheck``."""
        return backoff(delivery.num_delivered, base=1.0, cap=self._hold_recheck)

    async def _send(
        self,
        provider: Provider,
        accepted: NotificationAccepted,
        target: Target,
        attempt: int,
        delivery: Delivery,
    ) -> tuple[Outcome, float]:
        """One send, bounded by the send timeout, the event kept in progress meanwhile."""
        started = time.monotonic()
        with self._kept_alive(delivery):
            try:
                outcome = await asyncio.wait_for(
                    provider.send(accepted, target), timeout=self._send_timeout
                )
            except TimeoutError:
                outcome = Retry("timeout")
        latency = time.monotonic() - started
        self._latency.observe(latency, provider=target.provider)
        self._sends.inc(provider=target.provider, outcome=type(outcome).__name__.lower())
        log.info(
            "delivery_attempt",
            tenant_id=target.tenant_id,
            client_id=target.client_id,
            message_id=accepted.message_id,
            provider=target.provider,
            token=fingerprint(target.token),
            attempt=attempt,
            outcome=type(outcome).__name__,
            latency_ms=round(latency * 1000, 2),
        )
        return outcome, latency

    async def _state(self, accepted: NotificationAccepted, delivery: Delivery) -> NotificationState:
        """What was recorded of ``accepted``: nothing but itself on its first delivery (unless it
        sits on a subject of the old per-message scheme), else its outcomes read from the log."""
        state = evolve(NotificationState(), accepted)
        legacy = is_legacy_notification_subject(delivery.event.subject)
        if delivery.num_delivered == 1 and not legacy:
            return state
        outcomes = await self._outcomes(accepted, delivery.event.position, legacy=legacy)
        for record in outcomes:
            event = decode_event(record.data)
            if (
                isinstance(event, NotificationDelivered | NotificationDeliveryFailed)
                and event.message_id == accepted.message_id
            ):
                state = evolve(state, event)
        return state

    async def _outcomes(
        self, accepted: NotificationAccepted, position: int, *, legacy: bool
    ) -> list[RecordedEvent]:
        """The client's delivery outcomes recorded after ``position``, in log order."""
        t, c, m = accepted.tenant_id, accepted.client_id, accepted.message_id
        subjects = [notification_subject(t, c, "delivered"), notification_subject(t, c, "failed")]
        if legacy:
            subjects += [
                legacy_notification_subject(t, c, m, "delivered"),
                legacy_notification_subject(t, c, m, "failed"),
            ]
        found: list[RecordedEvent] = []
        for subject in subjects:
            found += [r async for r in self._log.read(subject, from_position=position + 1)]
        return sorted(found, key=lambda r: r.position)

    async def _give_up(
        self,
        accepted: NotificationAccepted,
        attempt: int,
        provider: ProviderType | None,
        reason: str,
        cause: Cause,
        delivery: Delivery,
    ) -> None:
        failed = failure(
            accepted,
            reason=reason,
            attempt=attempt,
            provider=provider,
            event_id=_new_id(),
            now=self._clock(),
            cause=cause,
        )
        await self._apply(Recording((Append(failed),)), delivery)

    async def _apply(self, recording: Recording, delivery: Delivery) -> None:
        """Append what ``recording`` says, then ack, or hand the event back for later."""
        for append in recording.appends:
            event = append.event
            if isinstance(event, NotificationDelivered):
                await self._record_delivered(append, delivery)
                continue
            try:
                await self._log.append(
                    subject_for(event),
                    encode_event(event),
                    expected_version=append.expected_version,
                    idempotency_key=append.idempotency_key,
                )
            except WrongExpectedVersion:
                if not append.may_lose:
                    raise
                log.info(
                    "outcome_superseded",
                    type=type(event).__name__,
                    position=delivery.event.position,
                )
                continue
            if isinstance(event, TenantSuspended):
                self._tenants.mark(event.tenant_id, True)
                log.warning("tenant_suspended", tenant_id=event.tenant_id, reason=event.reason)
            if isinstance(event, NotificationDeliveryFailed) and event.permanent:
                self._attempts.observe(max(event.attempt, 1))
        if recording.retry_in is None:
            await delivery.ack()
        else:
            await delivery.nak(recording.retry_in)

    async def _record_delivered(self, append: Append, delivery: Delivery) -> None:
        """Append ``notification.delivered`` until the log takes it: the provider already has
        the notification, so a failure here must never lead to sending it again."""
        event = append.event
        assert isinstance(event, NotificationDelivered)
        data = encode_event(event)
        delay, longest = self._record_retry
        with self._kept_alive(delivery):
            while True:
                try:
                    await self._log.append(
                        subject_for(event), data, idempotency_key=append.idempotency_key
                    )
                    break
                except EventLogUnavailable as exc:
                    log.warning(
                        "delivered_not_recorded_yet", message_id=event.message_id, error=str(exc)
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, longest)
        self._attempts.observe(event.attempt)
        accepted_at = delivery.event.recorded_at
        self._accept_to_delivered.observe((event.occurred_at - accepted_at).total_seconds())

    @contextlib.contextmanager
    def _kept_alive(self, delivery: Delivery) -> Iterator[None]:
        """Tell the log the event is still being worked on, every third of its ack wait (a
        timer, not a task: most sends end long before the first beat)."""
        loop = asyncio.get_running_loop()
        interval = self._ack_wait / 3
        beats: set[asyncio.Task[None]] = set()
        timer: asyncio.TimerHandle | None = None

        async def tell() -> None:
            with contextlib.suppress(EventLogUnavailable):
                await delivery.in_progress()

        def beat() -> None:
            nonlocal timer
            task = loop.create_task(tell())
            beats.add(task)
            task.add_done_callback(beats.discard)
            timer = loop.call_later(interval, beat)

        timer = loop.call_later(interval, beat)
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
            for task in beats:
                task.cancel()


class _Outage:
    """An outage of the log as a worker loop sees it: said once when it starts and once when it
    ends, with a growing wait between attempts."""

    def __init__(self, part: str, error: str) -> None:
        self._part = part
        self._delay = OUTAGE_BACKOFF[0]
        self._since = time.monotonic()
        log.warning("event_log_unreachable", part=part, error=error)

    def next_delay(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, OUTAGE_BACKOFF[1])
        return delay

    def over(self) -> None:
        log.info(
            "event_log_reachable_again",
            part=self._part,
            seconds=round(time.monotonic() - self._since, 1),
        )
