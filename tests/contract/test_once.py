"""Claim-once stores: the in-memory one and the JetStream key-value one behave alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio

from eventstore import InMemoryOnce, JetStreamOnce, Once


@pytest_asyncio.fixture(name="once", params=["memory", "jetstream"])
async def fx_once(
    request: pytest.FixtureRequest, nats_url: str, unique_name: str
) -> AsyncIterator[Once]:
    if request.param == "memory":
        yield InMemoryOnce(ttl=60)
        return
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        yield await JetStreamOnce.open(js, unique_name, ttl=60)
    finally:
        await js.delete_key_value(unique_name)
        await nc.close()


async def test_a_key_is_claimed_once(once: Once) -> None:
    assert await once.claim("sig-1") is True
    assert await once.claim("sig-1") is False
    assert await once.claim("sig-2") is True


async def test_concurrent_claims_have_one_winner(once: Once) -> None:
    results = await asyncio.gather(*(once.claim("contested") for _ in range(20)))
    assert results.count(True) == 1


async def test_a_released_key_can_be_claimed_again(once: Once) -> None:
    assert await once.claim("k") is True
    await once.release("k")
    assert await once.claim("k") is True


async def test_claims_expire_after_the_window() -> None:
    clock = [0.0]
    once = InMemoryOnce(ttl=10, now=lambda: clock[0])
    assert await once.claim("k") is True
    clock[0] = 9.9
    assert await once.claim("k") is False
    clock[0] = 10.1
    assert await once.claim("k") is True


async def test_two_stores_on_one_bucket_share_claims(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        first = await JetStreamOnce.open(js, unique_name, ttl=60)
        second = await JetStreamOnce.open(js, unique_name, ttl=60)
        assert await first.claim("shared") is True
        assert await second.claim("shared") is False
    finally:
        await js.delete_key_value(unique_name)
        await nc.close()
