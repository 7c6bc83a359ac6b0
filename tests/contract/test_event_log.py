"""The event-log contract, run against the in-memory log and the JetStream log alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from eventstore import (
    ANY,
    REST,
    AppendResult,
    Delivery,
    EventLog,
    EventLogUnavailable,
    InMemoryEventLog,
    InvalidSubject,
    JetStreamEventLog,
    RecordedEvent,
    Subscription,
    Wildcard,
    WrongExpectedVersion,
)


async def collect(events: AsyncIterator[RecordedEvent]) -> list[RecordedEvent]:
    return [event async for event in events]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` until it holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def fetch_n(sub: Subscription, count: int, within: float = 10.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived (failing after ``within`` seconds)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} of {count} deliveries arrived"
        got += await sub.fetch(count - len(got), timeout=min(remaining, 2.0))
    return got


# -- appending and reading ---------------------------------------------------------------------


async def test_an_empty_log(event_log: EventLog) -> None:
    assert await event_log.last_position() == 0
    assert await event_log.last(("nobody",)) is None
    assert await collect(event_log.read()) == []
    assert await collect(event_log.read(("nobody",))) == []


async def test_append_then_last_and_read(event_log: EventLog) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    result = await event_log.append(
        ("t1", "client", "c1"),
        b"\x00payload\xff",
        idempotency_key="k-1",
        headers={"Event-Type": "client.registered", "Trace": "ab cd"},
    )
    assert result == AppendResult(position=1, duplicate=False)

    last = await event_log.last(("t1", "client", "c1"))
    assert last is not None
    assert last.position == 1
    assert last.subject == ("t1", "client", "c1")
    assert last.data == b"\x00payload\xff"
    assert last.idempotency_key == "k-1"
    assert dict(last.headers) == {"Event-Type": "client.registered", "Trace": "ab cd"}
    assert last.recorded_at.tzinfo is not None
    assert before <= last.recorded_at <= datetime.now(UTC) + timedelta(seconds=5)

    assert await collect(event_log.read()) == [last]
    assert await collect(event_log.read(("t1", "client", "c1"))) == [last]
    assert await event_log.last_position() == 1


async def test_an_event_without_key_or_headers(event_log: EventLog) -> None:
    await event_log.append(("s",), b"")
    [event] = await collect(event_log.read())
    assert event.data == b""
    assert event.idempotency_key is None
    assert dict(event.headers) == {}


async def test_versions_are_positions(event_log: EventLog) -> None:
    assert (await event_log.append(("a",), b"1")).position == 1
    assert (await event_log.append(("b",), b"2")).position == 2
    assert (await event_log.append(("a",), b"3", expected_version=1)).position == 3
    last = await event_log.last(("a",))
    assert last is not None
    assert last.position == 3
    assert (await event_log.append(("a",), b"4", expected_version=3)).position == 4
    assert [e.position for e in await collect(event_log.read(("a",)))] == [1, 3, 4]


async def test_a_wrong_expected_version_raises_and_stores_nothing(event_log: EventLog) -> None:
    await event_log.append(("a",), b"1")
    await event_log.append(("b",), b"2")
    await event_log.append(("a",), b"3")

    with pytest.raises(WrongExpectedVersion) as caught:
        await event_log.append(("a",), b"stale", expected_version=1, idempotency_key="k")
    assert caught.value.subject == ("a",)
    assert caught.value.expected == 1
    assert caught.value.actual == 3
    assert await event_log.last_position() == 3
    # The refused key was not remembered: the same key goes through once the version is right.
    assert await event_log.append(("a",), b"4", expected_version=3, idempotency_key="k") == (
        AppendResult(position=4)
    )


async def test_expected_version_zero_means_no_event_yet(event_log: EventLog) -> None:
    assert (await event_log.append(("fresh",), b"1", expected_version=0)).position == 1
    with pytest.raises(WrongExpectedVersion) as caught:
        await event_log.append(("fresh",), b"2", expected_version=0)
    assert caught.value.actual == 1
    assert await event_log.last_position() == 1


async def test_of_two_concurrent_appends_at_one_version_exactly_one_wins(
    event_log: EventLog,
) -> None:
    await event_log.append(("agg",), b"0")
    outcomes = await asyncio.gather(
        event_log.append(("agg",), b"left", expected_version=1),
        event_log.append(("agg",), b"right", expected_version=1),
        return_exceptions=True,
    )
    wins = [o for o in outcomes if isinstance(o, AppendResult)]
    losses = [o for o in outcomes if isinstance(o, WrongExpectedVersion)]
    assert len(wins) == 1
    assert len(losses) == 1
    assert losses[0].actual == 2
    assert [e.position for e in await collect(event_log.read(("agg",)))] == [1, 2]


async def test_fifty_concurrent_appends_with_one_key_store_one_event(event_log: EventLog) -> None:
    results = await asyncio.gather(
        *(
            event_log.append(("dedup",), f"copy {i}".encode(), idempotency_key="same")
            for i in range(50)
        )
    )
    stored = [r for r in results if not r.duplicate]
    duplicates = [r for r in results if r.duplicate]
    assert len(stored) == 1
    assert len(duplicates) == 49
    assert {d.position for d in duplicates} == {stored[0].position}
    assert len(await collect(event_log.read())) == 1


async def test_a_retried_append_with_key_and_version_is_a_duplicate(event_log: EventLog) -> None:
    first = await event_log.append(("c",), b"x", idempotency_key="cmd-1", expected_version=0)
    again = await event_log.append(("c",), b"x", idempotency_key="cmd-1", expected_version=0)
    assert again == AppendResult(position=first.position, duplicate=True)
    assert await event_log.last_position() == 1


async def test_a_seen_key_whose_subject_moved_on_is_a_conflict(event_log: EventLog) -> None:
    first = await event_log.append(("c",), b"x", idempotency_key="cmd-1", expected_version=0)
    await event_log.append(("c",), b"y")
    attempt = event_log.append(("c",), b"x", idempotency_key="cmd-1", expected_version=0)
    if isinstance(event_log, JetStreamEventLog) and _is_nats_2_9(event_log):
        # nats-server 2.9 checks the key before the version.
        assert await attempt == AppendResult(position=first.position, duplicate=True)
    else:
        with pytest.raises(WrongExpectedVersion):
            await attempt
    assert await event_log.last_position() == 2


def _is_nats_2_9(event_log: JetStreamEventLog) -> bool:
    version = event_log._nc.connected_server_version
    return (version.major, version.minor) < (2, 10)


async def test_a_key_is_log_wide(event_log: EventLog) -> None:
    first = await event_log.append(("one",), b"x", idempotency_key="k")
    second = await event_log.append(("two",), b"x", idempotency_key="k")
    assert second == AppendResult(position=first.position, duplicate=True)
    assert await event_log.last(("two",)) is None


async def test_reserved_or_malformed_headers_are_refused(event_log: EventLog) -> None:
    for headers in ({"Nats-Msg-Id": "x"}, {"nats-anything": "x"}, {"A": " padded"}, {"B": "a\nb"}):
        with pytest.raises(ValueError):
            await event_log.append(("h",), b"", headers=headers)
    with pytest.raises(ValueError):
        await event_log.append(("h",), b"", headers={"bad name": "x"})
    assert await event_log.last_position() == 0


# -- filters and hostile tokens ----------------------------------------------------------------


async def test_filters_with_any_and_rest(event_log: EventLog) -> None:
    for subject in [("a", "x", "1"), ("a", "y", "1"), ("a", "x", "2", "deep"), ("b", "x", "1")]:
        await event_log.append(subject, b"")

    async def subjects(*subject_filter: str | Wildcard) -> list[tuple[str, ...]]:
        return [e.subject for e in await collect(event_log.read(subject_filter))]

    assert await subjects("a", ANY, "1") == [("a", "x", "1"), ("a", "y", "1")]
    assert await subjects("a", REST) == [("a", "x", "1"), ("a", "y", "1"), ("a", "x", "2", "deep")]
    assert await subjects("a", "x", REST) == [("a", "x", "1"), ("a", "x", "2", "deep")]
    assert await subjects(ANY, "x", ANY) == [("a", "x", "1"), ("b", "x", "1")]
    assert await subjects(ANY, ANY, ANY, ANY) == [("a", "x", "2", "deep")]
    assert await subjects("a") == []
    assert await subjects("a", "x", "1", REST) == []
    assert len(await subjects(REST)) == 4


HOSTILE_TOKENS = [
    "a.b",
    ".",
    "..",
    "*",
    ">",
    "a*",
    ">b",
    "with space",
    " ",
    "\t\r\n",
    "=",
    "=2E",
    "%2E",
    "ünïcødé",
    "钱包",
    "emoji \U0001f680",
    "x" * 1000,
    ("ab.* >é" * 143)[:1000],
]


@pytest.mark.parametrize("token", HOSTILE_TOKENS, ids=lambda t: repr(t)[:20])
async def test_hostile_tokens_round_trip_and_never_leak(event_log: EventLog, token: str) -> None:
    await event_log.append(("w", "a", "b"), b"decoy")
    await event_log.append(("w", "plain"), b"decoy")
    await event_log.append(("w", "." if token == "=2E" else "=2E"), b"decoy")
    mine = await event_log.append(("w", token), b"mine")
    await event_log.append(("w", token, "child"), b"child")

    last = await event_log.last(("w", token))
    assert last is not None
    assert last.position == mine.position
    assert last.subject == ("w", token)
    assert [e.data for e in await collect(event_log.read(("w", token)))] == [b"mine"]
    assert [e.data for e in await collect(event_log.read(("w", token, REST)))] == [b"child"]
    two_tokens = await collect(event_log.read(("w", ANY)))
    assert ("w", token) in [e.subject for e in two_tokens]
    assert all(len(e.subject) == 2 for e in two_tokens)
    everything = await collect(event_log.read())
    assert [e.subject for e in everything if e.data in (b"mine", b"child")] == [
        ("w", token),
        ("w", token, "child"),
    ]


async def test_invalid_subjects_are_refused(event_log: EventLog) -> None:
    for subject in [(), ("",), ("a", ""), ("é" * 1000,), ("\ud800",)]:
        with pytest.raises(InvalidSubject):
            await event_log.append(subject, b"")
    with pytest.raises(InvalidSubject):
        await event_log.last(("x" * 5000,))
    with pytest.raises(InvalidSubject):
        await collect(event_log.read((REST, "a")))
    # The log is still usable after refusing them.
    assert (await event_log.append(("ok",), b"")).position == 1


# -- reading ranges ------------------------------------------------------------------------------


async def test_read_from_and_to_positions(event_log: EventLog) -> None:
    for i in range(1, 11):
        await event_log.append(("even" if i % 2 == 0 else "odd",), str(i).encode())

    async def positions(from_position: int = 1, to_position: int | None = None) -> list[int]:
        events = event_log.read((REST,), from_position=from_position, to_position=to_position)
        return [e.position for e in await collect(events)]

    async def positions_of(
        subject: str, from_position: int = 1, to_position: int | None = None
    ) -> list[int]:
        events = event_log.read((subject,), from_position=from_position, to_position=to_position)
        return [e.position for e in await collect(events)]

    assert await positions(from_position=4) == [4, 5, 6, 7, 8, 9, 10]
    assert await positions(from_position=4, to_position=6) == [4, 5, 6]
    assert await positions(to_position=1) == [1]
    assert await positions(from_position=10, to_position=10) == [10]
    assert await positions(from_position=11) == []
    assert await positions(from_position=7, to_position=3) == []
    assert await positions(from_position=8, to_position=500) == [8, 9, 10]
    assert await positions_of("even", from_position=3, to_position=8) == [4, 6, 8]
    assert await positions_of("odd", from_position=4) == [5, 7, 9]
    assert await positions_of("odd", to_position=4) == [1, 3]


async def test_read_from_a_time(event_log: EventLog) -> None:
    """``from_time`` starts at the first event recorded at or after it; positions still bound."""
    for i in range(1, 9):
        await event_log.append(("even" if i % 2 == 0 else "odd",), str(i).encode())
    stored = await collect(event_log.read())
    times = [e.recorded_at for e in stored]
    assert times == sorted(times)

    async def positions(
        subject: tuple[str | Wildcard, ...],
        from_time: datetime,
        from_position: int = 1,
        to_position: int | None = None,
    ) -> list[int]:
        events = event_log.read(
            subject, from_time=from_time, from_position=from_position, to_position=to_position
        )
        return [e.position for e in await collect(events)]

    def expected(when: datetime, subject: str | None = None) -> list[int]:
        first = next((i for i, t in enumerate(times) if t >= when), len(times))
        return [e.position for e in stored[first:] if subject in (None, e.subject[0])]

    for event in stored:
        at = event.recorded_at
        assert await positions((REST,), from_time=at) == expected(at)
        later = at + timedelta(microseconds=1)
        assert await positions((REST,), from_time=later) == expected(later)
        assert await positions(("odd",), from_time=at) == expected(at, "odd")
        assert await positions(("even",), from_time=at) == expected(at, "even")
    assert await positions((REST,), from_time=times[0] - timedelta(days=1)) == list(range(1, 9))
    assert await positions((REST,), from_time=times[-1] + timedelta(days=1)) == []
    assert await positions(("odd",), from_time=times[-1] + timedelta(days=1)) == []
    # from_position and to_position still bound the read
    first = times[0] - timedelta(seconds=1)
    assert await positions((REST,), from_time=first, from_position=6) == [6, 7, 8]
    assert await positions((REST,), from_time=first, to_position=2) == [1, 2]
    assert await positions((REST,), from_time=times[4], from_position=2, to_position=6) == [
        p for p in expected(times[4]) if 2 <= p <= 6
    ]
    with pytest.raises(ValueError):
        await collect(event_log.read(from_time=datetime(2025, 1, 1)))


async def test_a_long_history_of_one_subject_reads_whole_and_in_order(event_log: EventLog) -> None:
    for i in range(60):
        await event_log.append(("long",), str(i).encode())
        if i % 3 == 0:
            await event_log.append(("other",), b"")
    events = await collect(event_log.read(("long",)))
    assert [e.data for e in events] == [str(i).encode() for i in range(60)]
    middle = events[30].position
    assert [e.data for e in await collect(event_log.read(("long",), from_position=middle))] == [
        str(i).encode() for i in range(30, 60)
    ]
    assert [e.position for e in await collect(event_log.read(("long", REST)))] == []


async def test_a_read_stops_at_the_last_position_of_its_start(event_log: EventLog) -> None:
    for i in range(5):
        await event_log.append(("r", str(i)), b"")
    seen: list[int] = []
    async for event in event_log.read(("r", ANY)):
        seen.append(event.position)
        if event.position == 1:
            await event_log.append(("r", "late"), b"")
    assert seen == [1, 2, 3, 4, 5]


async def test_a_read_can_be_left_early(event_log: EventLog) -> None:
    for _ in range(20):
        await event_log.append(("e",), b"")
    reader = cast(AsyncGenerator[RecordedEvent, None], event_log.read())
    async with aclosing(reader):
        async for event in reader:
            if event.position == 3:
                break
    assert len(await collect(event_log.read())) == 20


# -- durable subscriptions ---------------------------------------------------------------------


async def test_a_subscription_delivers_everything_until_acked(event_log: EventLog) -> None:
    await event_log.append(("s", "1"), b"one")
    sub = await event_log.subscribe("worker", ack_wait=30)
    await event_log.append(("s", "2"), b"two")
    await event_log.append(("s", "3"), b"three")

    deliveries = await fetch_n(sub, 3)
    assert [d.event.data for d in deliveries] == [b"one", b"two", b"three"]
    assert [d.num_delivered for d in deliveries] == [1, 1, 1]
    assert deliveries[1].event.subject == ("s", "2")
    for delivery in deliveries:
        await delivery.ack()
        await delivery.ack()  # settling twice is harmless
    assert await sub.fetch(10, timeout=0.3) == []
    assert await sub.pending() == 0
    await sub.close()


async def test_fetch_waits_for_new_events(event_log: EventLog) -> None:
    sub = await event_log.subscribe("waiter")

    async def append_soon() -> None:
        await asyncio.sleep(0.2)
        await event_log.append(("later",), b"news")

    appender = asyncio.create_task(append_soon())
    deliveries = await sub.fetch(5, timeout=5.0)
    await appender
    assert [d.event.data for d in deliveries] == [b"news"]
    await deliveries[0].ack()
    await sub.close()


async def test_nak_redelivers(event_log: EventLog) -> None:
    await event_log.append(("n",), b"again")
    sub = await event_log.subscribe("naker")
    [first] = await fetch_n(sub, 1)
    await first.nak()
    [second] = await fetch_n(sub, 1)
    assert second.event == first.event
    assert second.num_delivered == 2
    await second.ack()
    assert await sub.fetch(1, timeout=0.3) == []
    await sub.close()


async def test_nak_with_a_delay_redelivers_later(event_log: EventLog) -> None:
    await event_log.append(("n",), b"later")
    sub = await event_log.subscribe("delayed")
    [first] = await fetch_n(sub, 1)
    await first.nak(delay=1.5)
    assert await sub.fetch(1, timeout=0.3) == []
    [second] = await fetch_n(sub, 1)
    assert second.event.position == first.event.position
    assert second.num_delivered == 2
    await second.ack()
    await sub.close()


async def test_what_is_not_acked_in_time_comes_again(event_log: EventLog) -> None:
    await event_log.append(("u",), b"forgotten")
    sub = await event_log.subscribe("slow", ack_wait=1.0)
    [first] = await fetch_n(sub, 1)
    started = time.monotonic()
    [second] = await fetch_n(sub, 1)
    assert time.monotonic() - started >= 0.5
    assert second.event.position == first.event.position
    assert second.num_delivered == 2
    await second.in_progress()
    await second.ack()
    await sub.close()


async def test_subscribers_of_one_durable_share_the_events(event_log: EventLog) -> None:
    for i in range(30):
        await event_log.append(("job", str(i)), b"")
    left = await event_log.subscribe("pool")
    right = await event_log.subscribe("pool")
    got: dict[str, list[int]] = {"left": [], "right": []}
    deadline = time.monotonic() + 15
    while len(got["left"]) + len(got["right"]) < 30:
        assert time.monotonic() < deadline
        for name, sub in (("left", left), ("right", right)):
            for delivery in await sub.fetch(4, timeout=0.5):
                got[name].append(delivery.event.position)
                await delivery.ack()
    assert got["left"]
    assert got["right"]
    assert not set(got["left"]) & set(got["right"])
    assert sorted(got["left"] + got["right"]) == list(range(1, 31))
    assert await left.fetch(1, timeout=0.3) == []
    await left.close()
    await right.close()


async def test_a_durable_resumes_where_it_was(event_log: EventLog) -> None:
    for i in range(4):
        await event_log.append(("d",), str(i).encode())
    sub = await event_log.subscribe("resumer")
    for delivery in await fetch_n(sub, 2):
        await delivery.ack()
    await sub.close()
    again = await event_log.subscribe("resumer")
    deliveries = await fetch_n(again, 2)
    assert [d.event.data for d in deliveries] == [b"2", b"3"]
    for delivery in deliveries:
        await delivery.ack()
    await again.close()


async def test_from_position_restarts_a_durable(event_log: EventLog) -> None:
    for i in range(5):
        await event_log.append(("p",), str(i).encode())
    sub = await event_log.subscribe("replayer")
    for delivery in await fetch_n(sub, 5):
        await delivery.ack()
    await sub.close()

    restarted = await event_log.subscribe("replayer", from_position=3)
    deliveries = await fetch_n(restarted, 3)
    assert [d.event.position for d in deliveries] == [3, 4, 5]
    assert [d.num_delivered for d in deliveries] == [1, 1, 1]
    for delivery in deliveries:
        await delivery.ack()
    fresh = await event_log.subscribe("newcomer", from_position=5)
    assert [d.event.position for d in await fetch_n(fresh, 1)] == [5]
    await restarted.close()
    await fresh.close()


async def test_pending_counts_what_was_not_handed_out(event_log: EventLog) -> None:
    sub = await event_log.subscribe("lag", ("q", REST))
    assert await sub.pending() == 0
    for i in range(5):
        await event_log.append(("q", str(i)), b"")
        await event_log.append(("not-q",), b"")

    async def pending_is(expected: int) -> bool:
        return await sub.pending() == expected

    await eventually(lambda: pending_is(5))
    deliveries = await fetch_n(sub, 2)
    assert [d.event.subject for d in deliveries] == [("q", "0"), ("q", "1")]
    await eventually(lambda: pending_is(3))
    await sub.close()


async def test_a_subscription_filter_with_wildcards(event_log: EventLog) -> None:
    for subject in [("t1", "client", "a"), ("t1", "tenant"), ("t2", "client", "b")]:
        await event_log.append(subject, b"")
    sub = await event_log.subscribe("clients", (ANY, "client", ANY))
    deliveries = await fetch_n(sub, 2)
    assert [d.event.subject for d in deliveries] == [("t1", "client", "a"), ("t2", "client", "b")]
    assert await sub.fetch(5, timeout=0.3) == []
    await sub.close()


async def test_a_subscription_with_several_filters(event_log: EventLog) -> None:
    subjects = [("n", "a", "accepted"), ("n", "a", "m1", "accepted"), ("n", "a", "failed")]
    for subject in [*subjects, ("n", "b", "m2", "accepted")]:
        await event_log.append(subject, b"")
    sub = await event_log.subscribe("both", [("n", ANY, "accepted"), ("n", ANY, ANY, "accepted")])
    deliveries = await fetch_n(sub, 3)
    assert [d.event.subject for d in deliveries] == [
        ("n", "a", "accepted"),
        ("n", "a", "m1", "accepted"),
        ("n", "b", "m2", "accepted"),
    ]
    assert await sub.fetch(5, timeout=0.3) == []
    await sub.close()


async def test_an_existing_durable_takes_new_filters_and_keeps_its_place(
    event_log: EventLog,
) -> None:
    for subject in [("old", "1"), ("new", "1"), ("old", "2"), ("new", "2")]:
        await event_log.append(subject, b"")
    sub = await event_log.subscribe("mover", ("old", ANY))
    [first] = await fetch_n(sub, 1)
    assert first.event.subject == ("old", "1")
    await first.ack()
    await sub.close()

    widened = await event_log.subscribe("mover", [("old", ANY), ("new", ANY)], ack_wait=5.0)
    deliveries = await fetch_n(widened, 3)
    assert [d.event.subject for d in deliveries] == [("new", "1"), ("old", "2"), ("new", "2")]
    await widened.close()


async def test_each_delivery_says_how_many_matches_were_still_to_come(
    event_log: EventLog,
) -> None:
    for i in range(4):
        await event_log.append(("c", str(i)), b"")
        await event_log.append(("other",), b"")
    sub = await event_log.subscribe("counter", ("c", ANY))
    deliveries = await fetch_n(sub, 4)
    assert [d.pending for d in deliveries] == [3, 2, 1, 0]
    await sub.close()


async def test_max_ack_pending_holds_back_new_events(event_log: EventLog) -> None:
    for i in range(5):
        await event_log.append(("m",), str(i).encode())
    sub = await event_log.subscribe("bounded", max_ack_pending=2)
    first = await fetch_n(sub, 2)
    assert await sub.fetch(5, timeout=0.5) == []
    await first[0].ack()
    [third] = await fetch_n(sub, 1)
    assert third.event.position == 3
    await sub.close()


async def test_events_naked_with_a_delay_count_against_max_ack_pending(
    event_log: EventLog,
) -> None:
    for i in range(4):
        await event_log.append(("h",), str(i).encode())
    bounded = await event_log.subscribe("bounded-naks", max_ack_pending=2)
    for delivery in await fetch_n(bounded, 2):
        await delivery.nak(30.0)
    assert await bounded.fetch(2, timeout=0.5) == []
    await bounded.close()

    unbounded = await event_log.subscribe("unbounded-naks", max_ack_pending=-1)
    for delivery in await fetch_n(unbounded, 2):
        await delivery.nak(30.0)
    assert [d.event.position for d in await fetch_n(unbounded, 2)] == [3, 4]
    await unbounded.close()


async def test_first_position_is_the_oldest_event_kept(event_log: EventLog) -> None:
    assert await event_log.first_position() == 0
    for _ in range(3):
        await event_log.append(("f",), b"")
    assert await event_log.first_position() == 1


# -- implementation specifics ------------------------------------------------------------------


async def test_jetstream_stream_configuration(nats_url: str, unique_name: str) -> None:
    first = await JetStreamEventLog.connect(
        nats_url, stream=unique_name, prefix=unique_name, duplicate_window=120.0
    )
    try:
        await first.append(("x",), b"kept")
        second = await JetStreamEventLog.connect(
            nats_url, stream=unique_name, prefix=unique_name, duplicate_window=60.0
        )
        await second.ensure_stream(duplicate_window=60.0)
        await second.close()
        info = await first._js.stream_info(unique_name)
        config = info.config
        assert config.storage == "file"
        assert config.deny_delete is True
        assert config.deny_purge is True
        assert config.allow_direct is True
        assert config.subjects == [f"{unique_name}.>"]
        assert config.duplicate_window == pytest.approx(60.0)
        assert config.num_replicas == 1
        assert info.state.messages == 1
        assert await first.last_position() == 1
    finally:
        await first._js.delete_stream(unique_name)
        await first.close()


async def test_jetstream_limits_drop_the_oldest_events(nats_url: str, unique_name: str) -> None:
    event_log = await JetStreamEventLog.connect(
        nats_url, stream=unique_name, prefix=unique_name, max_bytes=4096
    )
    try:
        for i in range(100):
            await event_log.append(("x", str(i)), b"y" * 100)
        first = await event_log.first_position()
        assert first > 1
        assert await event_log.last_position() == 100
        assert [e.position async for e in event_log.read()][:1] == [first]
        config = (await event_log._js.stream_info(unique_name)).config
        assert (config.max_bytes, config.discard) == (4096, "old")
        # the limits are lifted again by a process that has none
        await event_log.ensure_stream()
        config = (await event_log._js.stream_info(unique_name)).config
        assert config.max_bytes == -1
    finally:
        await event_log._js.delete_stream(unique_name)
        await event_log.close()


async def test_jetstream_unreachable_server_is_unavailable() -> None:
    with pytest.raises(EventLogUnavailable):
        await JetStreamEventLog.connect(
            "nats://127.0.0.1:1", stream="none", prefix="none", connect_timeout=0.5
        )


async def test_jetstream_closed_log_is_unavailable(nats_url: str, unique_name: str) -> None:
    event_log = await JetStreamEventLog.connect(nats_url, stream=unique_name, prefix=unique_name)
    await event_log.close()
    with pytest.raises(EventLogUnavailable):
        await event_log.append(("x",), b"")
    with pytest.raises(EventLogUnavailable):
        await event_log.last(("x",))


async def test_memory_duplicate_window_follows_its_clock() -> None:
    clock = [1000.0]
    event_log = InMemoryEventLog(duplicate_window=10.0, now=lambda: clock[0])
    first = await event_log.append(("k",), b"", idempotency_key="once")
    clock[0] += 9.9
    assert (await event_log.append(("k",), b"", idempotency_key="once")).duplicate
    clock[0] += 0.2
    second = await event_log.append(("k",), b"", idempotency_key="once")
    assert not second.duplicate
    assert second.position == first.position + 1
    await event_log.close()


async def test_jetstream_an_existing_durable_takes_a_changed_ack_wait(
    nats_url: str, unique_name: str
) -> None:
    """A dispatcher started with a longer send timeout asks for a longer ack wait: the durable
    the earlier one created is updated in place (and keeps its place)."""
    event_log = await JetStreamEventLog.connect(nats_url, stream=unique_name, prefix=unique_name)
    try:
        await event_log.append(("a",), b"")
        first = await event_log.subscribe("sender", ack_wait=30.0, max_ack_pending=-1)
        [delivery] = await fetch_n(first, 1)
        await delivery.ack()
        await first.close()
        await event_log.append(("b",), b"")
        second = await event_log.subscribe("sender", ack_wait=90.0, max_ack_pending=-1)
        info = await event_log._js.consumer_info(unique_name, "sender")
        assert info.config.ack_wait == pytest.approx(90.0)
        assert [d.event.subject for d in await fetch_n(second, 1)] == [("b",)]
        await second.close()
    finally:
        await event_log._js.delete_stream(unique_name)
        await event_log.close()
