"""Personal fields: the pure split and merge, sealing under per-client keys, the key cache, and
erasure through the relay service, the dispatcher, the read models' plans and the history."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from eventstore import InMemoryEventLog, InMemoryKeyStore, RecordedEvent
from projections import devices, inbox
from relaypush.audit import HistoryQuery, client_state_at, history
from relaypush.config import DEFAULT_TENANT, Settings
from relaypush.delivery.dispatcher import Dispatcher
from relaypush.delivery.outcomes import Delivered, Outcome, Target
from relaypush.domain.clients import ClientState, client_state
from relaypush.domain.events import (
    ClientErased,
    ClientRegistered,
    ClientUnregistered,
    Event,
    NotificationAccepted,
    NotificationDeliveryFailed,
    NotificationDropped,
    NotifyMessage,
    RawMessage,
    SealedFields,
    decode_event,
    encode_event,
)
from relaypush.domain.payload import RegisterRequest
from relaypush.domain.personal import (
    PersonalFields,
    decode_personal,
    encode_personal,
    opened_event,
    personal_fields,
    sealed_event,
    sealed_of,
)
from relaypush.domain.streams import client_subject
from relaypush.http.app import create_app
from relaypush.logs import fingerprint
from relaypush.metrics import Registry
from relaypush.privacy import ClientKeys, KeyUnavailable, Sealer, key_name
from relaypush.sealing import Keyring
from relaypush.service import Dropped, ErasureNotConfigured, RelayService
from tests.asgi import asgi_client

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TENANT = DEFAULT_TENANT
TOKEN = "device-token-7f3a"
NOTIFY = NotifyMessage(title="Your secret title", body="and its body", url="https://x.example")
BLOB = base64.b64encode(msgspec.json.encode(NOTIFY)).decode()
RAW_MESSAGE = "a raw message nobody may read after erasure"
MARKER = SealedFields(key_id="k1", nonce=b"n", ciphertext=b"c")


def registered(client: str = "w1", token: str = TOKEN) -> ClientRegistered:
    return ClientRegistered(
        event_id=uuid.uuid4().hex,
        occurred_at=T0,
        tenant_id=TENANT,
        client_id=client,
        provider="noop",
        token=token,
    )


def accepted(client: str = "w1", message: str = "m1", **fields: object) -> NotificationAccepted:
    defaults: dict[str, object] = {
        "topic": "topic-1",
        "flags": 16,
        "flag_names": ("notify",),
        "blob": BLOB,
        "notify": NOTIFY,
    }
    return NotificationAccepted(
        event_id=uuid.uuid4().hex,
        occurred_at=T0,
        tenant_id=TENANT,
        client_id=client,
        message_id=message,
        dedup_key=f"dk-{message}",
        **(defaults | fields),  # type: ignore[arg-type]
    )


def raw_accepted(client: str = "w1") -> NotificationAccepted:
    return accepted(
        client,
        "m-raw",
        flags=0,
        flag_names=(),
        blob=None,
        notify=None,
        raw=RawMessage(topic="topic-1", tag=4002, message=RAW_MESSAGE),
    )


def reg(client: str, token: str = TOKEN, *, always_raw: bool = False) -> RegisterRequest:
    return RegisterRequest(client_id=client, provider="noop", token=token, always_raw=always_raw)


def sealer(store: InMemoryKeyStore | None = None, **options: object) -> Sealer:
    return Sealer(ClientKeys(store or InMemoryKeyStore(), **options))  # type: ignore[arg-type]


# -- the pure split and merge ------------------------------------------------------------------


def test_a_registration_has_its_token_as_personal_field() -> None:
    event = registered()
    fields = personal_fields(event)
    assert fields == PersonalFields(token=TOKEN)
    assert decode_personal(encode_personal(fields)) == fields
    marker = MARKER
    stripped = sealed_event(event, marker)
    assert stripped.token == ""
    assert stripped.sealed == marker
    assert sealed_of(stripped) == marker
    assert opened_event(stripped, fields) == event


def test_a_cleartext_push_seals_blob_and_notify_and_an_encrypted_one_nothing() -> None:
    event = accepted()
    fields = personal_fields(event)
    assert fields == PersonalFields(blob=BLOB, notify=NOTIFY)
    marker = MARKER
    stripped = sealed_event(event, marker)
    assert (stripped.blob, stripped.notify) == (None, None)
    assert (stripped.topic, stripped.flags, stripped.message_id) == ("topic-1", 16, "m1")
    assert opened_event(stripped, fields) == event

    encrypted = accepted(flags=1, flag_names=("encrypted",), encrypted=True, notify=None)
    assert personal_fields(encrypted) is None
    assert personal_fields(stripped) is None  # sealed already


def test_a_raw_push_seals_its_message_and_keeps_topic_and_tag() -> None:
    event = raw_accepted()
    fields = personal_fields(event)
    assert fields == PersonalFields(raw_message=RAW_MESSAGE)
    marker = MARKER
    stripped = sealed_event(event, marker)
    assert stripped.raw == RawMessage(topic="topic-1", tag=4002, message="")
    assert opened_event(stripped, fields) == event


def test_an_event_without_personal_fields_is_never_sealed() -> None:
    unregistered = ClientUnregistered(
        event_id="e", occurred_at=T0, tenant_id=TENANT, client_id="w1", reason="requested"
    )
    assert sealed_of(unregistered) is None
    assert sealed_of(registered()) is None


# -- sealing and opening -----------------------------------------------------------------------


async def test_sealed_events_hold_no_personal_data_and_open_again() -> None:
    s = sealer()
    for event in (registered(), accepted(), raw_accepted()):
        if isinstance(event, ClientRegistered):
            sealed: Event = await s.seal_registration(event)
        else:
            state = await _state_of(s)
            sealed = await s.seal_notification(event, state)
        data = encode_event(sealed)
        for secret in (TOKEN, NOTIFY.title, NOTIFY.body, BLOB, RAW_MESSAGE):
            assert secret.encode() not in data
        again = decode_event(data)
        assert await s.open_any(again) == event


async def _state_of(s: Sealer) -> ClientState:
    event = await s.seal_registration(registered())
    return client_state(event, version=1)


async def test_sealed_fields_do_not_open_for_another_client() -> None:
    s = sealer()
    sealed = await s.seal_registration(registered("w1"))
    await s.seal_registration(registered("w2"))
    moved = msgspec.structs.replace(sealed, client_id="w2")
    assert (await s.open(moved)).sealed is not None  # unreadable, shown as erased


async def test_a_destroyed_key_leaves_the_fields_sealed_for_good() -> None:
    store = InMemoryKeyStore()
    s = sealer(store)
    sealed = await s.seal_registration(registered())
    assert s.keys is not None
    key_id = await s.keys.destroy(TENANT, "w1")
    assert key_id == sealed.sealed.key_id if sealed.sealed else False
    assert (await s.open(sealed)).sealed is not None
    # another process, with nothing cached, cannot open it either
    assert (await sealer(store).open(sealed)).sealed is not None
    # a new registration gets a new key; the old events stay unreadable
    fresh = await s.seal_registration(registered())
    assert fresh.sealed is not None
    assert fresh.sealed.key_id != key_id
    assert (await s.open(fresh)).token == TOKEN
    assert (await s.open(sealed)).sealed is not None


async def test_without_a_key_store_nothing_is_sealed_and_nothing_sealed_opens() -> None:
    plain = Sealer(None)
    event = registered()
    assert await plain.seal_registration(event) is event
    sealed = await sealer().seal_registration(event)
    assert (await plain.open(sealed)).sealed is not None


async def test_keys_are_wrapped_under_the_credentials_ring_when_there_is_one() -> None:
    ring = Keyring(b"\x01" * 32)
    store = InMemoryKeyStore()
    s = sealer(store, ring=ring)
    sealed = await s.seal_registration(registered())
    stored = await store.get(key_name(TENANT, "w1"))
    assert stored is not None
    assert ring.current_id.encode() in stored
    assert (await sealer(store, ring=ring).open(sealed)).token == TOKEN
    with pytest.raises(KeyUnavailable):  # not an erasure: the ring is missing
        await sealer(store).open(sealed)
    with pytest.raises(KeyUnavailable):
        await sealer(store, ring=Keyring(b"\x02" * 32)).open(sealed)

    unwrapped = InMemoryKeyStore()
    await sealer(unwrapped).seal_registration(registered())
    stored = await unwrapped.get(key_name(TENANT, "w1"))
    assert stored is not None
    assert b'"wrap"' not in stored


# -- the key cache -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_push_path_reads_a_key_once_per_client_while_it_is_cached() -> None:
    store = InMemoryKeyStore()
    api = sealer(store)
    registration = await api.seal_registration(registered())
    state = client_state(registration, version=1)
    clock = Clock()
    other = Sealer(ClientKeys(store, ttl=60, monotonic=clock))  # another API process
    reads = store.reads
    for n in range(20):
        await other.seal_notification(accepted(message=f"m{n}"), state)
    assert store.reads == reads + 1
    clock.now = 61  # expired: read again, once
    for n in range(5):
        await other.seal_notification(accepted(message=f"n{n}"), state)
    assert store.reads == reads + 2


async def test_a_push_after_a_new_registration_elsewhere_reads_the_new_key() -> None:
    store = InMemoryKeyStore()
    api, other = sealer(store), sealer(store)
    first = client_state(await api.seal_registration(registered()), version=1)
    await other.seal_notification(accepted(), first)  # caches the first key
    assert api.keys is not None
    await api.keys.destroy(TENANT, "w1")
    second = client_state(await api.seal_registration(registered()), version=2)
    assert second.sealed is not None
    assert first.sealed is not None
    pushed = await other.seal_notification(accepted(message="m2"), second)
    assert pushed.sealed is not None
    assert pushed.sealed.key_id == second.sealed.key_id


async def test_a_destroyed_key_id_is_remembered_without_reading_again() -> None:
    store = InMemoryKeyStore()
    writer = sealer(store)
    events: list[Event] = [await writer.seal_registration(registered())]
    events += [
        await writer.seal_notification(accepted(message=f"m{n}"), await _state_of(writer))
        for n in range(3)
    ]
    assert writer.keys is not None
    await writer.keys.destroy(TENANT, "w1")
    reader = sealer(store)
    reads = store.reads
    for event in events:
        assert sealed_of(await reader.open_any(event)) is not None
    assert store.reads == reads + 1


class SlowStore(InMemoryKeyStore):
    """Its next read answers what the store held when it started, once ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: asyncio.Event | None = None

    async def get(self, name: str) -> bytes | None:
        value = await super().get(name)
        hold, self.hold = self.hold, None
        if hold is not None:
            await hold.wait()
        return value


async def test_a_read_that_predates_a_new_key_does_not_make_it_gone() -> None:
    store = SlowStore()
    reader = ClientKeys(store)
    gate = store.hold = asyncio.Event()
    old = asyncio.create_task(reader.for_opening(TENANT, "w1", "k-destroyed-long-ago"))
    await asyncio.sleep(0)  # its read has started, and sees no key
    registration = await sealer(store).seal_registration(registered())
    assert registration.sealed is not None
    new = asyncio.create_task(reader.for_opening(TENANT, "w1", registration.sealed.key_id))
    await asyncio.sleep(0)  # joins the read under way
    gate.set()
    assert await old is None
    ring = await new
    assert ring is not None
    assert ring.current_id == registration.sealed.key_id
    assert await reader.for_opening(TENANT, "w1", registration.sealed.key_id) is ring


async def test_a_batch_forgets_a_client_key_at_its_erasure() -> None:
    store = InMemoryKeyStore()
    writer = sealer(store)
    projector = sealer(store)
    registration = await writer.seal_registration(registered())
    state = await _state_of(writer)
    before = await writer.seal_notification(accepted(message="m1"), state)
    assert [sealed_of(e) for _, e in await projector.open_batch([(1, before)])] == [None]
    # erased elsewhere; a push that raced the erasure was sealed under the destroyed key
    late = await writer.seal_notification(accepted(message="m2"), state)
    assert writer.keys is not None
    key_id = await writer.keys.destroy(TENANT, "w1")
    erased = ClientErased(
        event_id="e", occurred_at=T0, tenant_id=TENANT, client_id="w1", key_ids=(key_id or "",)
    )
    opened = await projector.open_batch([(2, registration), (3, erased), (4, late)])
    # the key was still cached before the erasure; after it, as a fresh process would see it
    assert [sealed_of(e) is None for _, e in opened] == [True, True, False]


# -- the relay service -------------------------------------------------------------------------


@pytest.fixture(name="service")
def fx_service() -> RelayService:
    return RelayService(
        InMemoryEventLog(),
        enabled_providers=lambda _: frozenset({"noop"}),
        metrics=Registry(),
        sealer=sealer(),
    )


async def stored(service: RelayService) -> list[Event]:
    return [decode_event(r.data) async for r in service.log.read()]


async def test_the_service_seals_registrations_and_pushes(service: RelayService) -> None:
    await service.register(TENANT, reg("w1"), request_id="r1")
    body = msgspec.json.encode({"id": "m1", "payload": {"topic": "t", "flags": 16, "blob": BLOB}})
    await service.push(TENANT, "w1", body, request_id="r2")
    data = b"".join([r.data async for r in service.log.read()])
    assert TOKEN.encode() not in data
    assert BLOB.encode() not in data
    opened = [await service.sealer.open_any(e) for e in await stored(service)]
    assert isinstance(opened[0], ClientRegistered)
    assert opened[0].token == TOKEN
    assert isinstance(opened[1], NotificationAccepted)
    assert opened[1].blob == BLOB


async def test_erasing_unregisters_destroys_and_records(service: RelayService) -> None:
    await service.register(TENANT, reg("w1"), request_id="r1")
    done = await service.erase(TENANT, "w1", request_id="r2")
    events = await stored(service)
    assert [type(e) for e in events] == [ClientRegistered, ClientUnregistered, ClientErased]
    unregistered, erased = events[1], events[2]
    assert isinstance(unregistered, ClientUnregistered)
    assert unregistered.reason == "erased"
    first = events[0]
    assert isinstance(first, ClientRegistered)
    assert first.sealed is not None
    assert isinstance(erased, ClientErased)
    assert erased.key_ids == (first.sealed.key_id,)
    assert (done.position, done.unregistered, done.key_ids) == (3, True, erased.key_ids)
    assert sealed_of(await service.sealer.open_any(first)) is not None

    outcome = await service.push(TENANT, "w1", b'{"id":"m9","payload":"t:1:eA=="}', request_id="")
    assert isinstance(outcome, Dropped)
    assert outcome.reason == "client_not_registered"
    assert isinstance((await stored(service))[-1], NotificationDropped)

    again = await service.erase(TENANT, "w1", request_id="r3")  # nothing left to destroy
    assert (again.unregistered, again.key_ids) == (False, ())


async def test_a_registration_racing_an_erasure_is_erased_too(service: RelayService) -> None:
    await service.register(TENANT, reg("w1"), request_id="r1")
    log = service.log
    assert isinstance(log, InMemoryEventLog)
    keys = service.sealer.keys
    assert keys is not None
    original = keys.destroy
    raced = False

    async def destroy_after_a_registration(tenant_id: str, client_id: str) -> str | None:
        nonlocal raced
        if not raced:
            raced = True
            await service.register(
                TENANT,
                reg("w1", "another-token"),
                request_id="rival",
            )
        return await original(tenant_id, client_id)

    keys.destroy = destroy_after_a_registration  # type: ignore[method-assign]
    done = await service.erase(TENANT, "w1", request_id="r2")
    tags = [type(e).__name__ for e in await stored(service)]
    assert tags == [
        "ClientRegistered",
        "ClientUnregistered",
        "ClientRegistered",  # slipped in before client.erased could be appended
        "ClientUnregistered",
        "ClientErased",
    ]
    assert len(done.key_ids) == 1
    assert done.unregistered
    rival = (await stored(service))[2]
    assert sealed_of(await service.sealer.open_any(rival)) is not None
    last = await log.last(client_subject(TENANT, "w1"))
    assert last is not None
    assert isinstance(decode_event(last.data), ClientErased)


async def test_erasure_needs_a_key_store() -> None:
    service = RelayService(InMemoryEventLog(), enabled_providers=lambda _: frozenset({"noop"}))
    with pytest.raises(ErasureNotConfigured):
        await service.erase(TENANT, "w1", request_id="r")


# -- the dispatcher ----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[NotificationAccepted, Target]] = []

    async def send(self, notification: NotificationAccepted, target: Target) -> Outcome:
        self.sent.append((notification, target))
        return Delivered(provider_id="p")

    async def close(self) -> None:
        return None


async def test_the_dispatcher_opens_token_and_content_and_fails_erased_ones(
    service: RelayService,
) -> None:
    await service.register(TENANT, reg("w1"), request_id="r1")
    body = msgspec.json.encode({"id": "m1", "payload": {"topic": "t", "flags": 16, "blob": BLOB}})
    await service.push(TENANT, "w1", body, request_id="r2")
    provider = Recorder()
    dispatcher = Dispatcher(
        service.log,
        {"noop": provider},
        deadline=60,
        metrics=Registry(),
        sealer=Sealer(ClientKeys(_store_of(service))),  # a process of its own
    )
    accepted_record = [r async for r in service.log.read()][1]
    delivery = _Delivery(accepted_record)
    await dispatcher._process(delivery)
    assert delivery.acked
    [(notification, target)] = provider.sent
    assert (target.token, notification.blob, notification.sealed) == (TOKEN, BLOB, None)

    # the registration's key is destroyed behind its back: nothing goes out any more
    keys = service.sealer.keys
    assert keys is not None
    await keys.destroy(TENANT, "w1")
    body = msgspec.json.encode({"id": "m2", "payload": {"topic": "t", "flags": 16, "blob": BLOB}})
    await service.push(TENANT, "w1", body, request_id="r3")
    records = [r async for r in service.log.read()]
    fresh = Dispatcher(
        service.log,
        {"noop": provider},
        deadline=60,
        metrics=Registry(),
        sealer=Sealer(ClientKeys(_store_of(service))),
    )
    again = _Delivery(records[-1])
    await fresh._process(again)
    assert again.acked
    assert len(provider.sent) == 1
    failed = decode_event((await _last_record(service)).data)
    assert isinstance(failed, NotificationDeliveryFailed)
    assert (failed.reason, failed.permanent) == ("client_erased", True)


def _store_of(service: RelayService) -> InMemoryKeyStore:
    keys = service.sealer.keys
    assert keys is not None
    store = keys._store
    assert isinstance(store, InMemoryKeyStore)
    return store


async def _last_record(service: RelayService) -> RecordedEvent:
    return [r async for r in service.log.read()][-1]


class _Delivery:
    def __init__(self, record: RecordedEvent) -> None:
        self.event = record
        self.num_delivered = 1
        self.pending = 0
        self.acked = False

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        return None

    async def in_progress(self) -> None:
        return None


# -- the read models' plans ----------------------------------------------------------------------


def test_devices_null_the_token_of_an_erased_client() -> None:
    erased = ClientErased(event_id="x", occurred_at=T0, tenant_id=TENANT, client_id="w1")
    plan = devices.plan([(1, registered()), (2, erased)])
    [upsert] = plan.upserts
    assert upsert.token is None
    assert upsert.last_position == 2
    unregistered = ClientUnregistered(
        event_id="u", occurred_at=T0, tenant_id=TENANT, client_id="w2", reason="erased"
    )
    plan = devices.plan([(3, unregistered), (4, msgspec.structs.replace(erased, client_id="w2"))])
    [unregistration] = plan.unregistrations
    assert unregistration.erased
    assert unregistration.last_position == 4
    plan = devices.plan([(5, erased)])
    assert [(e.client_id, e.last_position) for e in plan.erasures] == [("w1", 5)]
    marker = MARKER
    [still_sealed] = devices.plan([(6, sealed_event(registered(), marker))]).upserts
    assert still_sealed.token is None


def test_the_inbox_keeps_no_content_of_a_notification_still_sealed() -> None:
    marker = MARKER
    for event in (accepted(), raw_accepted()):
        change = inbox.InboxChange.entry(sealed_event(event, marker))
        assert (change.title, change.body, change.url, change.blob, change.raw_message) == (
            None,
            None,
            None,
            None,
            None,
        )
        assert (change.message_id, change.topic) == (event.message_id, "topic-1")


# -- history, state and the admin route ----------------------------------------------------------


async def test_history_and_state_show_erased_fields(service: RelayService) -> None:
    await service.register(TENANT, reg("w1"), request_id="r1")
    body = msgspec.json.encode({"topic": "t", "tag": 4002, "message": RAW_MESSAGE})
    await service.register(
        TENANT,
        reg("w2", "t2", always_raw=True),
        request_id="r2",
    )
    await service.push(TENANT, "w2", body, request_id="r3")
    log, s = service.log, service.sealer

    entries = [e async for e in history(log, HistoryQuery(), sealer=s)]
    assert entries[0].data is not None
    assert entries[0].data["token_fingerprint"] == fingerprint(TOKEN)
    assert "sealed" not in entries[0].data
    assert entries[2].data is not None
    assert entries[2].data["raw"]["message"] == RAW_MESSAGE
    unopened = [e async for e in history(log, HistoryQuery())]
    assert unopened[0].data is not None
    assert unopened[0].data["token_fingerprint"] == "sealed"

    state = await client_state_at(log, TENANT, "w1", sealer=s)
    assert state.token_fingerprint == fingerprint(TOKEN)

    await service.erase(TENANT, "w2", request_id="r4")
    entries = [e async for e in history(log, HistoryQuery(client="w2"), sealer=s)]
    assert [e.type for e in entries] == [
        "client.registered",
        "notification.accepted",
        "client.unregistered",
        "client.erased",
    ]
    assert entries[0].data is not None
    assert entries[0].data["token_fingerprint"] == "erased"
    assert entries[1].data is not None
    assert entries[1].data["sealed"] == "erased"
    assert entries[1].data["raw"] == {"topic": "t", "tag": 4002, "message": "erased"}
    assert RAW_MESSAGE not in msgspec.json.encode(entries).decode()
    state = await client_state_at(log, TENANT, "w2", 2, sealer=s)
    assert state.registered
    assert state.token_fingerprint == "erased"
    now = await client_state_at(log, TENANT, "w2", sealer=s)
    assert not now.registered
    assert now.erased_at is not None
    assert now.unregister_reason == "erased"


async def test_the_admin_erase_route(service: RelayService) -> None:
    await service.register(
        "0000-0000-0000-0000",
        reg("w1"),
        request_id="r1",
    )
    app = create_app(settings=Settings(admin_token="t0ken"), service=service, event_log=service.log)
    auth = {"Authorization": "Bearer t0ken"}
    async with asgi_client(app) as http:
        assert (await http.post("/admin/clients/w1/erase")).status_code == 401
        bad = await http.post("/admin/clients/w1/erase", params={"tenant": "a b"}, headers=auth)
        assert bad.status_code == 400
        assert bad.json()["fields"][0]["field"] == "tenant"
        response = await http.post("/admin/clients/did:key:w1/erase", headers=auth)
        assert response.status_code == 200, response.text
        erased = response.json()["erased"]
        assert (erased["client_id"], erased["tenant_id"]) == ("w1", TENANT)
        assert erased["unregistered"] is True
        assert len(erased["key_ids"]) == 1
        state = await http.get("/admin/clients/w1/state", params={"at": "1"}, headers=auth)
        assert state.json()["state"]["token_fingerprint"] == "erased"

    plain = RelayService(InMemoryEventLog(), enabled_providers=lambda _: frozenset({"noop"}))
    app = create_app(settings=Settings(admin_token="t0ken"), service=plain, event_log=plain.log)
    async with asgi_client(app) as http:
        response = await http.post("/admin/clients/w1/erase", headers=auth)
        assert response.status_code == 503
        assert response.json()["errors"][0]["name"] == "erasure_not_configured"
