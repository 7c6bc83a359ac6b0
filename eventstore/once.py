"""Claim a key once within a time window, shared by every process that uses the same store.

For nonces such as signatures: the first ``claim`` of a key within ``ttl`` seconds wins, every
later one (from this process or another) loses, until the key ages out. The JetStream version is
a key-value bucket whose entries expire after ``ttl``; ``create`` only succeeds for a key that
does not exist, so two processes racing for one key cannot both win.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from eventstore.errors import EventLogUnavailable

__all__ = ["InMemoryOnce", "JetStreamOnce", "Once"]


class Once(Protocol):
    async def claim(self, key: str) -> bool:
        """True the first time ``key`` is claimed within the window, False afterwards."""
        ...

    async def release(self, key: str) -> None:
        """Forget a claim (its work did not happen), so the key may be claimed again."""
        ...


class InMemoryOnce:
    """One process's claims; memory is bounded by the keys claimed within the window."""

    def __init__(self, ttl: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._now = now
        self._expiry: dict[str, float] = {}

    async def claim(self, key: str) -> bool:
        now = self._now()
        if len(self._expiry) > 10_000:
            self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        if self._expiry.get(key, 0.0) > now:
            return False
        self._expiry[key] = now + self._ttl
        return True

    async def release(self, key: str) -> None:
        self._expiry.pop(key, None)


class JetStreamOnce:
    """Claims in a JetStream key-value bucket whose entries expire after ``ttl`` seconds."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, *, ttl: float, replicas: int = 1
    ) -> JetStreamOnce:
        """Create the bucket if needed (idempotent) and bind to it."""
        config = KeyValueConfig(
            bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE, replicas=replicas
        )
        try:
            kv = await js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            kv = await js.key_value(bucket)
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable(f"cannot open bucket {bucket}") from exc
        return cls(kv)

    async def claim(self, key: str) -> bool:
        try:
            await self._kv.create(key, b"")
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable("cannot claim a key") from exc
        return True

    async def release(self, key: str) -> None:
        try:
            await self._kv.purge(key)
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable("cannot release a key") from exc
