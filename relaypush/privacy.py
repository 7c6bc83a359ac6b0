"""Per-client keys and sealed personal fields: what lets a client be erased from an append-only log.

Each client has a random 256-bit data key, created when it is first registered (or first pushed
to, for a client registered before keys existed) and kept *outside* the log, in a key store
that can forget (:class:`eventstore.KeyStore`: the JetStream bucket ``<stream>_KEYS``). The
personal fields of its events (:mod:`relaypush.domain.personal`) are sealed under that key with
AES-256-GCM, bound to the tenant, the client and the event's type, before they are appended.
Erasing the client destroys the key: the sealed bytes stay in the log, so the hash chain still
verifies, but nobody can read them any more.

In the store, a key is wrapped (sealed) under the credentials key ring
(``RELAYPUSH_CREDENTIALS_KEY``) when one is configured, bound to the store name it is kept
under; without a ring it is stored as it is, and destroying it erases just as well, but whoever
reads the bucket reads the keys.

:class:`ClientKeys` caches keys per process for :data:`KEY_CACHE_SECONDS`: the push path seals
with a cached key (a miss costs one read of the store per client and process), and readers open
with one. A key id that was found destroyed is remembered for good. :class:`Sealer` is the one
place that seals and opens; an event it cannot open keeps its ``sealed`` field, which every
reader shows as erased.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec
import structlog

from eventstore import JetStreamEventLog, KeyStore
from relaypush.config import ConfigError, Settings
from relaypush.domain.clients import ClientState
from relaypush.domain.events import (
    ClientErased,
    ClientRegistered,
    Event,
    NotificationAccepted,
    SealedFields,
)
from relaypush.domain.personal import (
    decode_personal,
    encode_personal,
    opened_event,
    personal_fields,
    sealed_event,
)
from relaypush.sealing import KEY_BYTES, CredentialKeyError, Keyring, Sealed

__all__ = [
    "KEY_CACHE_SECONDS",
    "ClientKeys",
    "KeyUnavailable",
    "PrivacyError",
    "Sealer",
    "key_name",
    "open_sealer",
]

log = structlog.get_logger(__name__)

KEY_CACHE_SECONDS: Final = 60.0
"""How long a process keeps using a client key it read: after an erasure elsewhere, other
processes may still open that client's events for this long (the projector forgets the key as
soon as it reads ``client.erased``)."""
MAX_CACHED_KEYS: Final = 100_000
_PREFETCH: Final = 32  # store reads in flight while a batch's keys are fetched

E = TypeVar("E", ClientRegistered, NotificationAccepted)
PositionedEvent = tuple[int, Event]


class PrivacyError(Exception):
    """Root of the errors of :mod:`relaypush.privacy`."""


class KeyUnavailable(PrivacyError):
    """A client key exists but cannot be unwrapped: the credentials key ring it was wrapped
    under is not configured. Not an erasure: configure the key (or an old one) again."""


class _StoredKey(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A client key as the store holds it: ``key`` itself, or (``wrap`` set) sealed under the
    ring key ``wrap`` with ``nonce``."""

    key: bytes
    wrap: str | None = None
    nonce: bytes | None = None


_encode_stored = msgspec.json.Encoder().encode
_decode_stored = msgspec.json.Decoder(_StoredKey).decode


def key_name(tenant_id: str, client_id: str) -> str:
    """The store name of a client's key: a hash, so the store holds no client id."""
    joined = "\x00".join(("relaypush client key", tenant_id, client_id)).encode()
    return hashlib.sha256(joined).hexdigest()[:32]


def _wrap_context(name: str) -> bytes:
    return b"relaypush client key v1\x00" + name.encode()


@dataclass(slots=True)
class _Cached:
    expires: float
    ring: Keyring | None  # None: the store had no key


class ClientKeys:
    """Clients' data keys: created once, cached for ``ttl`` seconds, destroyed on erasure."""

    def __init__(
        self,
        store: KeyStore,
        *,
        ring: Keyring | None = None,
        ttl: float = KEY_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        max_cached: int = MAX_CACHED_KEYS,
    ) -> None:
        """``ring`` wraps keys in the store (None: they are stored unwrapped)."""
        self._store = store
        self._ring = ring
        self._ttl = ttl
        self._monotonic = monotonic
        self._max = max_cached
        self._cache: dict[str, _Cached] = {}
        self._gone: dict[tuple[str, str], None] = {}  # (name, key id) destroyed, oldest first
        self._loading: dict[str, asyncio.Future[Keyring | None]] = {}

    async def for_registration(self, tenant_id: str, client_id: str) -> Keyring:
        """The client's key as the store holds it now (created if it has none): a registration
        must not be sealed under a key another process destroyed a moment ago."""
        name = key_name(tenant_id, client_id)
        return await self._load(name) or await self._create(name)

    async def for_push(
        self, tenant_id: str, client_id: str, *, registered_with: str | None
    ) -> Keyring:
        """The key to seal a notification with: the cached one when it is the key the client's
        registration was sealed with (``registered_with``, None for a registration made before
        keys existed), else the store's (created if it has none)."""
        name = key_name(tenant_id, client_id)
        cached = self._cached(name)
        ring = cached.ring if cached is not None else None
        if ring is not None and registered_with in (None, ring.current_id):
            return ring
        return await self._load(name) or await self._create(name)

    async def for_opening(self, tenant_id: str, client_id: str, key_id: str) -> Keyring | None:
        """The client's key ``key_id``; None when it was destroyed."""
        name = key_name(tenant_id, client_id)
        if (name, key_id) in self._gone:
            return None
        cached = self._cached(name)
        if cached is not None and cached.ring is not None and cached.ring.current_id == key_id:
            return cached.ring
        joined = name in self._loading
        ring = await self._load(name)
        if joined and (ring is None or ring.current_id != key_id):
            # the read under way may predate the key: read again before concluding that the
            # key is gone (the store holds one key per client at a time)
            ring = await self._load(name, join=False)
        if ring is not None and ring.current_id == key_id:
            return ring
        self._mark_gone(name, key_id)
        return None

    async def destroy(self, tenant_id: str, client_id: str) -> str | None:
        """Destroy the client's key; returns its id, None when it had none."""
        name = key_name(tenant_id, client_id)
        ring = await self._load(name, join=False)
        destroyed = await self._store.destroy(name)
        self._cache.pop(name, None)
        if ring is None:
            return None
        self._mark_gone(name, ring.current_id)
        return ring.current_id if destroyed else None

    def forget(self, tenant_id: str, client_id: str, key_ids: Sequence[str] = ()) -> None:
        """Drop the client's cached key, and remember ``key_ids`` as destroyed (on reading a
        ``client.erased`` another process appended)."""
        name = key_name(tenant_id, client_id)
        self._cache.pop(name, None)
        for key_id in key_ids:
            self._mark_gone(name, key_id)

    def _cached(self, name: str) -> _Cached | None:
        cached = self._cache.get(name)
        if cached is None or cached.expires <= self._monotonic():
            return None
        return cached

    def _remember(self, name: str, ring: Keyring | None) -> None:
        if len(self._cache) >= self._max and name not in self._cache:
            del self._cache[next(iter(self._cache))]
        self._cache[name] = _Cached(self._monotonic() + self._ttl, ring)

    def _mark_gone(self, name: str, key_id: str) -> None:
        if len(self._gone) >= self._max:
            del self._gone[next(iter(self._gone))]
        self._gone[(name, key_id)] = None

    async def _load(self, name: str, *, join: bool = True) -> Keyring | None:
        """Read the key from the store and cache it; concurrent callers share one read, unless
        ``join`` is false (the caller needs a read that starts now)."""
        loading = self._loading.get(name)
        if loading is not None and join:
            return await asyncio.shield(loading)
        if loading is not None:
            stored = await self._store.get(name)
            ring = None if stored is None else self._unwrap(name, stored)
            self._remember(name, ring)
            return ring
        future: asyncio.Future[Keyring | None] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            stored = await self._store.get(name)
            ring = None if stored is None else self._unwrap(name, stored)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only the callers that waited on it see it
            raise
        else:
            future.set_result(ring)
            self._remember(name, ring)
            return ring
        finally:
            del self._loading[name]

    async def _create(self, name: str) -> Keyring:
        stored = await self._store.create(name, self._wrap(name, secrets.token_bytes(KEY_BYTES)))
        ring = self._unwrap(name, stored)  # ours, or the one a concurrent create stored first
        self._remember(name, ring)
        return ring

    def _wrap(self, name: str, key: bytes) -> bytes:
        if self._ring is None:
            return _encode_stored(_StoredKey(key=key))
        sealed = self._ring.seal(key, context=_wrap_context(name))
        return _encode_stored(
            _StoredKey(key=sealed.ciphertext, wrap=sealed.key_id, nonce=sealed.nonce)
        )

    def _unwrap(self, name: str, data: bytes) -> Keyring:
        try:
            stored = _decode_stored(data)
        except msgspec.DecodeError as exc:
            raise PrivacyError(f"the client key {name} is not readable: {exc}") from exc
        if stored.wrap is None:
            return _keyring(name, stored.key)
        if self._ring is None or stored.nonce is None:
            raise KeyUnavailable(
                f"the client key {name} is wrapped under credentials key {stored.wrap!r}, "
                "and RELAYPUSH_CREDENTIALS_KEY is not set"
            )
        try:
            key = self._ring.open(
                Sealed(stored.wrap, stored.nonce, stored.key), context=_wrap_context(name)
            )
        except CredentialKeyError as exc:
            raise KeyUnavailable(f"the client key {name} cannot be unwrapped: {exc}") from exc
        return _keyring(name, key)


def _keyring(name: str, key: bytes) -> Keyring:
    if len(key) != KEY_BYTES:
        raise PrivacyError(f"the client key {name} is {len(key)} bytes, not {KEY_BYTES}")
    return Keyring(key)


def _context(tenant_id: str, client_id: str, kind: str) -> bytes:
    """The associated data of a sealed field: where it belongs."""
    return b"relaypush personal v1\x00" + msgspec.json.encode([tenant_id, client_id, kind])


_REGISTERED: Final = "client.registered"
_ACCEPTED: Final = "notification.accepted"


class Sealer:
    """Seals personal fields before events are appended and opens them for readers.

    With ``keys`` None nothing is sealed (events are appended as they are) and nothing sealed
    opens: readers see sealed events as erased.
    """

    def __init__(self, keys: ClientKeys | None) -> None:
        self._keys = keys

    @property
    def keys(self) -> ClientKeys | None:
        return self._keys

    async def seal_registration(self, event: ClientRegistered) -> ClientRegistered:
        """``event`` with its token sealed under the client's current key."""
        if self._keys is None:
            return event
        ring = await self._keys.for_registration(event.tenant_id, event.client_id)
        return self._seal(event, ring, _REGISTERED)

    async def seal_notification(
        self, event: NotificationAccepted, client: ClientState
    ) -> NotificationAccepted:
        """``event`` with its personal fields sealed under the key of the registration
        ``client`` (cached: no round trip unless this process has not seen the key lately)."""
        if self._keys is None or personal_fields(event) is None:
            return event
        registered_with = client.sealed.key_id if client.sealed is not None else None
        ring = await self._keys.for_push(
            event.tenant_id, event.client_id, registered_with=registered_with
        )
        return self._seal(event, ring, _ACCEPTED)

    async def open(self, event: E) -> E:
        """``event`` with its personal fields back, or unchanged (still ``sealed``: erased)
        when its key was destroyed."""
        sealed = event.sealed
        if sealed is None or self._keys is None:
            return event
        kind = _REGISTERED if isinstance(event, ClientRegistered) else _ACCEPTED
        ring = await self._keys.for_opening(event.tenant_id, event.client_id, sealed.key_id)
        plaintext = self._open(ring, sealed, event.tenant_id, event.client_id, kind)
        if plaintext is None:
            return event
        return opened_event(event, decode_personal(plaintext))

    async def open_token(self, tenant_id: str, client_id: str, client: ClientState) -> str | None:
        """The device token of the registration ``client``; None when it was erased."""
        if client.sealed is None:
            return client.token
        if self._keys is None:
            return None
        ring = await self._keys.for_opening(tenant_id, client_id, client.sealed.key_id)
        plaintext = self._open(ring, client.sealed, tenant_id, client_id, _REGISTERED)
        return None if plaintext is None else decode_personal(plaintext).token

    async def open_any(self, event: Event) -> Event:
        """:meth:`open` for any event: events without personal fields pass as they are."""
        if isinstance(event, ClientRegistered):
            return await self.open(event)
        if isinstance(event, NotificationAccepted):
            return await self.open(event)
        return event

    async def open_batch(self, events: Sequence[PositionedEvent]) -> list[PositionedEvent]:
        """Open a batch of events in position order (``projections``' opener): the keys it
        needs are fetched together first, and a ``client.erased`` makes the events after it
        go back to the store for that client's key, as a process starting afresh would."""
        keys = self._keys
        if keys is None:
            return list(events)
        wanted: dict[tuple[str, str, str], None] = {}
        for _, event in events:
            if isinstance(event, ClientRegistered | NotificationAccepted) and event.sealed:
                wanted[(event.tenant_id, event.client_id, event.sealed.key_id)] = None
        if len(wanted) > 1:
            limit = asyncio.Semaphore(_PREFETCH)

            async def fetch(tenant_id: str, client_id: str, key_id: str) -> None:
                async with limit:
                    await keys.for_opening(tenant_id, client_id, key_id)

            await asyncio.gather(*(fetch(*w) for w in wanted))
        opened: list[PositionedEvent] = []
        for position, event in events:
            if isinstance(event, ClientErased):
                keys.forget(event.tenant_id, event.client_id, event.key_ids)
            opened.append((position, await self.open_any(event)))
        return opened

    def _seal(self, event: E, ring: Keyring, kind: str) -> E:
        fields = personal_fields(event)
        if fields is None:
            return event
        sealed = ring.seal(
            encode_personal(fields), context=_context(event.tenant_id, event.client_id, kind)
        )
        return sealed_event(
            event,
            SealedFields(key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext),
        )

    @staticmethod
    def _open(
        ring: Keyring | None, sealed: SealedFields, tenant_id: str, client_id: str, kind: str
    ) -> bytes | None:
        if ring is None:
            return None
        try:
            return ring.open(
                Sealed(sealed.key_id, sealed.nonce, sealed.ciphertext),
                context=_context(tenant_id, client_id, kind),
            )
        except CredentialKeyError:
            # altered, or moved from another client or event type: unreadable either way
            log.warning("sealed_fields_do_not_open", tenant_id=tenant_id, client_id=client_id)
            return None


async def open_sealer(event_log: JetStreamEventLog, settings: Settings) -> Sealer:
    """The sealer of a process: client keys in the bucket ``<RELAYPUSH_STREAM_NAME>_KEYS`` (as
    many replicas as the stream), wrapped under ``RELAYPUSH_CREDENTIALS_KEY`` when it is set."""
    ring: Keyring | None = None
    if settings.credentials_key:
        try:
            ring = Keyring.from_text(settings.credentials_key, settings.credentials_old_keys)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    store = await event_log.keys(replicas=settings.stream_replicas)
    return Sealer(ClientKeys(store, ring=ring))
