"""The client fold and the pure register / unregister / push decisions."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

import pytest

from relaypush.domain.clients import (
    NO_CLIENT,
    ClientState,
    PushToClient,
    RegisterClient,
    UnregisterClient,
    carry_forward,
    client_state,
    decide_push,
    decide_register,
    decide_unregister,
    evolve,
    record_duplicate,
)
from relaypush.domain.errors import InvalidRequest
from relaypush.domain.events import (
    Cause,
    ClientRegistered,
    ClientUnregistered,
    NotificationAccepted,
    NotificationDropped,
    NotifyMessage,
    ProviderType,
    RawMessage,
    SealedFields,
    decode_event,
    encode_event,
)
from relaypush.domain.streams import dedup_key

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TENANT = "tenant-1"
CLIENT = "z6MkClient"
ALL: frozenset[ProviderType] = frozenset({"apns", "apns-sandbox", "fcm", "noop"})
ONLY_NOOP: frozenset[ProviderType] = frozenset({"noop"})


def registered(*, always_raw: bool = False, version: int = 7) -> ClientState:
    event = ClientRegistered(
        event_id="e",
        occurred_at=NOW,
        tenant_id=TENANT,
        client_id=CLIENT,
        provider="fcm",
        token="tok",
        always_raw=always_raw,
    )
    return client_state(event, version=version)


def push_body(message_id: str = "m1", flags: int = 1, blob: str = "ZW5j") -> bytes:
    return json.dumps(
        {"id": message_id, "payload": {"topic": "ab", "flags": flags, "blob": blob}}
    ).encode()


def push(body: bytes, *, client_id: str = CLIENT) -> PushToClient:
    return PushToClient(tenant_id=TENANT, client_id=client_id, body=body, request_id="r1")


# fold


def test_no_event_is_an_unregistered_client_at_version_0() -> None:
    assert client_state(None, version=0) == NO_CLIENT
    assert not NO_CLIENT.registered


def test_registered_event_carries_the_whole_state() -> None:
    state = registered(always_raw=True, version=12)
    assert state == ClientState(
        registered=True, provider="fcm", token="tok", always_raw=True, version=12
    )


def test_unregistered_event_clears_the_state_but_keeps_the_version() -> None:
    event = ClientUnregistered(
        event_id="e", occurred_at=NOW, tenant_id=TENANT, client_id=CLIENT, reason="requested"
    )
    assert evolve(registered(), event, version=9) == ClientState(version=9)


def test_the_last_event_decides() -> None:
    again = ClientRegistered(
        event_id="e2",
        occurred_at=NOW,
        tenant_id=TENANT,
        client_id=CLIENT,
        provider="apns",
        token="tok2",
    )
    state = evolve(registered(), again, version=20)
    assert (state.provider, state.token, state.always_raw, state.version) == (
        "apns",
        "tok2",
        False,
        20,
    )


# register / unregister


def test_register_records_one_registered_event() -> None:
    command = RegisterClient(
        tenant_id=TENANT,
        client_id=CLIENT,
        provider="noop",
        token="tok",
        always_raw=True,
        request_id="req",
    )
    event = decide_register(NO_CLIENT, command, enabled=ALL, event_id="ev", now=NOW)
    assert event == ClientRegistered(
        event_id="ev",
        occurred_at=NOW,
        tenant_id=TENANT,
        cause=Cause(request_id="req"),
        client_id=CLIENT,
        provider="noop",
        token="tok",
        always_raw=True,
    )


def test_reregister_is_recorded_again() -> None:
    command = RegisterClient(tenant_id=TENANT, client_id=CLIENT, provider="fcm", token="tok")
    event = decide_register(registered(), command, enabled=ALL, event_id="ev", now=NOW)
    assert isinstance(event, ClientRegistered)


def test_register_with_a_provider_the_tenant_lacks_names_type() -> None:
    command = RegisterClient(tenant_id=TENANT, client_id=CLIENT, provider="apns", token="tok")
    with pytest.raises(InvalidRequest) as caught:
        decide_register(NO_CLIENT, command, enabled=ONLY_NOOP, event_id="e", now=NOW)
    assert [e.name for e in caught.value.errors] == ["provider_not_available"]
    assert [f.field for f in caught.value.fields] == ["type"]


@pytest.mark.parametrize("state", [NO_CLIENT, ClientState(version=3)], ids=["never", "gone"])
def test_unregister_is_recorded_even_when_not_registered(state: ClientState) -> None:
    command = UnregisterClient(tenant_id=TENANT, client_id=CLIENT, request_id="req")
    event = decide_unregister(state, command, event_id="ev", now=NOW)
    assert event.reason == "requested"
    assert event.cause == Cause(request_id="req")


# push


def test_push_to_a_registered_client_is_accepted_with_its_payload() -> None:
    event = decide_push(registered(), push(push_body(flags=17)), event_id="ev", now=NOW)
    assert event == NotificationAccepted(
        event_id="ev",
        occurred_at=NOW,
        tenant_id=TENANT,
        cause=Cause(request_id="r1", message_id="m1"),
        client_id=CLIENT,
        message_id="m1",
        dedup_key=dedup_key(TENANT, CLIENT, "m1"),
        topic="ab",
        flags=17,
        flag_names=("encrypted", "notify"),
        encrypted=True,
        blob="ZW5j",
    )


def test_cleartext_blob_is_decoded_into_notify() -> None:
    blob = base64.b64encode(b'{"title":"Hi","body":"there"}').decode()
    state = registered()
    event = decide_push(state, push(push_body(flags=16, blob=blob)), event_id="e", now=NOW)
    assert isinstance(event, NotificationAccepted)
    assert event.notify == NotifyMessage(title="Hi", body="there")
    assert event.blob == blob
    assert not event.encrypted


def test_raw_client_push_is_identified_by_sha256() -> None:
    body = json.dumps({"topic": "ab", "tag": 4001, "message": "hello"}).encode()
    event = decide_push(registered(always_raw=True), push(body), event_id="e", now=NOW)
    assert isinstance(event, NotificationAccepted)
    digest = hashlib.sha256(b"hello").hexdigest()
    assert event.message_id == digest
    assert event.dedup_key == dedup_key(TENANT, CLIENT, digest)
    assert event.raw == RawMessage(topic="ab", tag=4001, message="hello")


def test_push_to_unknown_client_is_dropped_under_its_message_id() -> None:
    event = decide_push(NO_CLIENT, push(push_body()), event_id="e", now=NOW)
    assert isinstance(event, NotificationDropped)
    assert (event.reason, event.message_id) == ("client_not_registered", "m1")


def test_raw_push_to_unknown_client_is_dropped_too() -> None:
    body = json.dumps({"topic": "ab", "tag": 1, "message": "hi"}).encode()
    event = decide_push(NO_CLIENT, push(body), event_id="e", now=NOW)
    assert isinstance(event, NotificationDropped)
    assert event.message_id == hashlib.sha256(b"hi").hexdigest()


def test_malformed_push_to_unknown_client_is_refused_not_dropped() -> None:
    with pytest.raises(InvalidRequest) as caught:
        decide_push(NO_CLIENT, push(b"{}"), event_id="e", now=NOW)
    assert {f.field for f in caught.value.fields} == {"id", "payload"}


def test_oversized_payload_is_refused() -> None:
    body = push_body(blob="A" * 5000)
    with pytest.raises(InvalidRequest) as caught:
        decide_push(registered(), push(body), event_id="e", now=NOW)
    assert [e.name for e in caught.value.errors] == ["payload_too_large"]


@pytest.mark.parametrize(
    ("always_raw", "body", "field"),
    [
        (True, push_body(), "payload"),
        (False, json.dumps({"topic": "ab", "tag": 1, "message": "x"}).encode(), "message"),
    ],
    ids=["legacy-to-raw", "raw-to-legacy"],
)
def test_body_of_the_wrong_kind_is_refused(always_raw: bool, body: bytes, field: str) -> None:
    state = registered(always_raw=always_raw)
    with pytest.raises(InvalidRequest) as caught:
        decide_push(state, push(body), event_id="e", now=NOW)
    assert [f.field for f in caught.value.fields] == [field]


def test_duplicate_names_the_same_notification() -> None:
    accepted = decide_push(registered(), push(push_body()), event_id="e1", now=NOW)
    assert isinstance(accepted, NotificationAccepted)
    duplicate = record_duplicate(accepted, event_id="e2", now=NOW)
    assert (duplicate.event_id, duplicate.message_id, duplicate.dedup_key) == (
        "e2",
        "m1",
        accepted.dedup_key,
    )
    assert duplicate.cause == accepted.cause


def test_a_carried_forward_registration_reads_as_that_registration() -> None:
    sealed = SealedFields(key_id="k1", nonce=b"n" * 12, ciphertext=b"c")
    original = ClientRegistered(
        event_id="r",
        occurred_at=NOW,
        tenant_id=TENANT,
        client_id=CLIENT,
        provider="apns",
        token="",
        always_raw=True,
        sealed=sealed,
    )
    carried = carry_forward(original, 17, event_id="k")
    assert isinstance(carried, ClientRegistered)
    assert (carried.event_id, carried.carried_position, carried.occurred_at) == ("k", 17, NOW)
    assert client_state(carried, version=40) == client_state(original, version=40)
    decoded = decode_event(encode_event(carried))
    assert decoded == carried
