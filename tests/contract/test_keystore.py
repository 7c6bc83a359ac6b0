"""Key stores: the in-memory one and the JetStream key-value one behave alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
import pytest_asyncio
from nats.js.api import KeyValueConfig, StorageType

from eventstore import (
    EventStoreError,
    InMemoryKeyStore,
    JetStreamEventLog,
    JetStreamKeyStore,
    KeyStore,
)


@pytest_asyncio.fixture(name="store", params=["memory", "jetstream"])
async def fx_store(
    request: pytest.FixtureRequest, nats_url: str, unique_name: str
) -> AsyncIterator[KeyStore]:
    if request.param == "memory":
        yield InMemoryKeyStore()
        return
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        yield await JetStreamKeyStore.open(js, unique_name)
    finally:
        await js.delete_key_value(unique_name)
        await nc.close()


async def test_a_name_holds_nothing_until_created(store: KeyStore) -> None:
    assert await store.get("client-1") is None
    assert await store.create("client-1", b"k1") == b"k1"
    assert await store.get("client-1") == b"k1"


async def test_create_keeps_the_first_value(store: KeyStore) -> None:
    assert await store.create("c", b"first") == b"first"
    assert await store.create("c", b"second") == b"first"
    assert await store.get("c") == b"first"


async def test_concurrent_creates_agree_on_one_value(store: KeyStore) -> None:
    values = [f"v{i}".encode() for i in range(20)]
    results = await asyncio.gather(*(store.create("contested", v) for v in values))
    assert len(set(results)) == 1
    assert await store.get("contested") == results[0]


async def test_a_destroyed_value_is_gone_and_the_name_can_be_created_again(
    store: KeyStore,
) -> None:
    await store.create("c", b"old")
    await store.create("other", b"kept")
    assert await store.destroy("c") is True
    assert await store.get("c") is None
    assert await store.destroy("c") is False
    assert await store.destroy("never") is False
    assert await store.create("c", b"new") == b"new"
    assert await store.get("c") == b"new"
    assert await store.get("other") == b"kept"


async def test_names_may_hold_any_character(store: KeyStore) -> None:
    names = ["a.b", "a*b", "a>b", "a b", "ünï", "x=41", "x/y", "$audit"]
    for index, name in enumerate(names):
        await store.create(name, bytes([index]))
    for index, name in enumerate(names):
        assert await store.get(name) == bytes([index])


async def test_two_stores_on_one_bucket_share_values(nats_url: str, unique_name: str) -> None:
    log = await JetStreamEventLog.connect(nats_url, stream=unique_name.upper(), prefix=unique_name)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        first = await log.keys()
        second = await log.keys()
        assert await first.create("shared", b"k") == b"k"
        assert await second.get("shared") == b"k"
        assert await second.destroy("shared") is True
        assert await first.get("shared") is None
        info = await js.stream_info(f"KV_{unique_name.upper()}_KEYS")
        assert info.config.deny_delete is False
        assert info.config.max_msgs_per_subject == 1
        assert info.config.storage == StorageType.FILE
    finally:
        await js.delete_key_value(f"{unique_name.upper()}_KEYS")
        await js.delete_stream(unique_name.upper())
        await nc.close()
        await log.close()


async def test_a_bucket_that_denies_deletes_is_refused(nats_url: str, unique_name: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.create_key_value(KeyValueConfig(bucket=unique_name, history=1))
        with pytest.raises(EventStoreError, match="denies deletes"):
            await JetStreamKeyStore.open(js, unique_name)
    finally:
        await js.delete_key_value(unique_name)
        await nc.close()
