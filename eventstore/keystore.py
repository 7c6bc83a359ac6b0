"""Small secrets kept beside the log, in a store that can forget them for good.

The log is append-only, so whatever must be made unreadable later cannot live in it. A key store
holds one value per name: :meth:`~KeyStore.create` stores one only where there is none (so two
processes racing for a name end up with the same value), :meth:`~KeyStore.get` reads it and
:meth:`~KeyStore.destroy` removes it for good, after which the name may be created anew.

The JetStream version is a key-value bucket (``nats kv`` reads it) whose stream allows deleting
messages, unlike a bucket made by ``nats kv add``: :meth:`~JetStreamKeyStore.destroy` deletes the
value's message with the server's secure erase, which overwrites its bytes in the file store
rather than leaving them in a block until a compaction. Names may hold any character: they are
encoded as subject tokens (:func:`eventstore.subjects.encode_token`).
"""

from __future__ import annotations

from typing import Final, Protocol

import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from eventstore.errors import EventLogUnavailable, EventStoreError
from eventstore.subjects import encode_token

__all__ = ["InMemoryKeyStore", "JetStreamKeyStore", "KeyStore"]

_DUPLICATE_WINDOW: Final = 120.0


class KeyStore(Protocol):
    """One value per name, created once, destroyed for good."""

    async def get(self, name: str) -> bytes | None:
        """The value stored under ``name``, or None."""
        ...

    async def create(self, name: str, value: bytes) -> bytes:
        """Store ``value`` under ``name`` unless a value is there already; returns the value
        stored now (``value``, or the one that was there or won a concurrent create)."""
        ...

    async def destroy(self, name: str) -> bool:
        """Remove the value under ``name`` for good; False when there was none."""
        ...


class InMemoryKeyStore:
    """One process's values, for tests."""

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}
        self.reads = 0  # how many gets were answered: tests count round trips with it

    async def get(self, name: str) -> bytes | None:
        self.reads += 1
        return self._values.get(name)

    async def create(self, name: str, value: bytes) -> bytes:
        return self._values.setdefault(name, value)

    async def destroy(self, name: str) -> bool:
        return self._values.pop(name, None) is not None


class JetStreamKeyStore:
    """Values in a JetStream key-value bucket whose messages can be erased."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, stream: str) -> None:
        self._js = js
        self._kv = kv
        self._stream = stream

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str, *, replicas: int = 1
    ) -> JetStreamKeyStore:
        """Create the bucket if needed (idempotent) and bind to it.

        The bucket's stream is the one ``nats kv add`` would make (one value per key, file
        storage, direct gets), except that it allows deletes. Raises ``EventStoreError`` when a
        bucket of that name exists and denies them: it could not destroy anything.
        """
        stream = f"KV_{bucket}"
        config = api.StreamConfig(
            name=stream,
            subjects=[f"$KV.{bucket}.>"],
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            max_msgs_per_subject=1,
            max_msgs=-1,
            max_consumers=-1,
            discard=api.DiscardPolicy.NEW,
            allow_direct=True,
            allow_rollup_hdrs=True,
            deny_delete=False,
            duplicate_window=_DUPLICATE_WINDOW,
        )
        try:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(stream)
                if info.config.deny_delete:
                    raise EventStoreError(
                        f"bucket {bucket} denies deletes, so it cannot destroy keys: "
                        "remove it or name another"
                    ) from None
            kv = await js.key_value(bucket)
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable(f"cannot open bucket {bucket}") from exc
        return cls(js, kv, stream)

    async def get(self, name: str) -> bytes | None:
        try:
            entry = await self._kv.get(encode_token(name))
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable("cannot read a key") from exc
        return entry.value

    async def create(self, name: str, value: bytes) -> bytes:
        key = encode_token(name)
        try:
            await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            stored = await self.get(name)
            if stored is None:  # destroyed between the two calls: try once more
                return await self.create(name, value)
            return stored
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable("cannot store a key") from exc
        return value

    async def destroy(self, name: str) -> bool:
        key = encode_token(name)
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return False
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable("cannot read a key") from exc
        if entry.revision is None:
            raise EventStoreError("the bucket answered without a revision")
        try:
            # a plain message delete: the server overwrites the message (secure erase)
            await self._js.delete_msg(self._stream, entry.revision)
        except nats.js.errors.APIError as exc:
            if exc.code != 503 and await self.get(name) is None:
                return False  # destroyed by someone else meanwhile
            raise EventLogUnavailable("cannot destroy a key") from exc
        except (nats.errors.Error, OSError) as exc:
            raise EventLogUnavailable("cannot destroy a key") from exc
        return True
