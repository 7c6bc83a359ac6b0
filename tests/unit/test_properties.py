"""Property tests (hypothesis) of what comes in from outside: push bodies, ids, relay signatures.

Each property holds for every input hypothesis draws: a parser either returns a value or raises
the domain's ``InvalidRequest`` (never anything else); the two payload forms mean the same; the
subject encoding keeps distinct ids apart; a cleartext push that is accepted fits its provider;
relay signature headers of any bytes are verified or refused with a 401. Runs are derandomized
(the same examples every run, in CI too) and keep no example database.
"""

from __future__ import annotations

import base64
import contextlib
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from eventstore.subjects import decode_token, encode_subject, encode_token
from relaypush.auth.relay_signature import RelaySignatureVerifier, make_relay_signature
from relaypush.domain.clients import NO_CLIENT, ClientState, PushToClient, decide_push
from relaypush.domain.errors import InvalidRequest, Unauthorized
from relaypush.domain.events import (
    NotificationAccepted,
    ProviderType,
    decode_event,
    encode_event,
)
from relaypush.domain.ids import MAX_ID_BYTES, id_problem
from relaypush.domain.payload import (
    MAX_FLAGS,
    LegacyPush,
    RawPush,
    decode_notify_blob,
    parse_push,
    parse_register,
)
from relaypush.domain.provider_payload import (
    MAX_PROVIDER_PAYLOAD,
    apns_body,
    fcm_data_size,
    fcm_message,
)
from relaypush.domain.streams import dedup_key

PROPERTY = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)

#: Text JSON can carry (no lone surrogates: they have no UTF-8, and no JSON encoder emits one).
characters = st.characters(codec="utf-8")
text = st.text(characters)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)
ids = st.text(characters, min_size=1, max_size=300)
topics = st.text(st.characters(codec="utf-8", exclude_characters=":"), min_size=1, max_size=40)
flags = st.integers(min_value=0, max_value=MAX_FLAGS)
base64_blobs = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()).filter(bool)
notify_fields = st.fixed_dictionaries(
    {"title": st.text(characters, max_size=600), "body": st.text(characters, max_size=600)},
    optional={
        "icon": st.text(characters, max_size=300),
        "url": st.text(characters, max_size=300),
        "type": st.text(characters, max_size=50),
        "extra": json_values,
    },
)


def notify_blob(fields: dict[str, Any]) -> str:
    return base64.b64encode(msgspec.json.encode(fields)).decode()


def parse_outcome(body: bytes, *, always_raw: bool) -> object:
    """The parsed push, or the names of the fields refused: never another exception."""
    try:
        return parse_push(body, always_raw=always_raw)
    except InvalidRequest as refused:
        return sorted(f.field for f in refused.fields)


# -- payload decoding --------------------------------------------------------------------------


@PROPERTY
@given(body=st.binary(max_size=2000), always_raw=st.booleans())
def test_any_bytes_parse_or_are_refused(body: bytes, always_raw: bool) -> None:
    parse_outcome(body, always_raw=always_raw)


@PROPERTY
@given(value=json_values, always_raw=st.booleans(), register=st.booleans())
def test_any_json_parses_or_is_refused(value: object, always_raw: bool, register: bool) -> None:
    body = msgspec.json.encode(value)
    if register:
        with contextlib.suppress(InvalidRequest):
            parse_register(body)
    else:
        parse_outcome(body, always_raw=always_raw)


@settings(PROPERTY, max_examples=40)
@given(depth=st.integers(min_value=1, max_value=5000), opener=st.sampled_from([b"[", b'{"a":']))
def test_json_of_any_depth_parses_or_is_refused(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    inner = b"[" * depth + b"]" * depth
    for body in (opener * depth + b"1" + closer * depth, b'{"id":"m","payload":' + inner + b"}"):
        parse_outcome(body, always_raw=False)
        with contextlib.suppress(InvalidRequest):
            parse_register(body)


@PROPERTY
@given(
    message_id=ids,
    topic=topics,
    flag_bits=flags,
    blob=st.one_of(base64_blobs, notify_fields.map(notify_blob), st.text(characters, min_size=1)),
)
def test_both_payload_forms_mean_the_same(
    message_id: str, topic: str, flag_bits: int, blob: str
) -> None:
    assume(":" not in blob)
    as_object = {"id": message_id, "payload": {"topic": topic, "flags": flag_bits, "blob": blob}}
    as_string = {"id": message_id, "payload": f"{topic}:{flag_bits}:{blob}"}
    first = parse_outcome(msgspec.json.encode(as_object), always_raw=False)
    second = parse_outcome(msgspec.json.encode(as_string), always_raw=False)
    assert first == second


@PROPERTY
@given(fields=notify_fields, flag_bits=flags.map(lambda f: f & ~1))
def test_a_cleartext_blob_decodes_to_its_notify_message(
    fields: dict[str, Any], flag_bits: int
) -> None:
    notify, why = decode_notify_blob(notify_blob(fields))
    assert why is None
    assert notify is not None
    assert (notify.title, notify.body) == (fields["title"], fields["body"])
    assert notify.icon == fields.get("icon")


@PROPERTY
@given(
    fields=notify_fields,
    flag_bits=flags.map(lambda f: f & ~1),
    topic=topics,
    provider=st.sampled_from(["apns", "apns-sandbox", "fcm", "noop"]),
    token=st.text(characters, min_size=1, max_size=200),
)
def test_an_accepted_cleartext_push_fits_its_provider_as_sent(
    fields: dict[str, Any], flag_bits: int, topic: str, provider: ProviderType, token: str
) -> None:
    """However the size is made up (base64, JSON escapes, unicode, many fields), an accepted
    push is at most 4096 bytes as the provider receives it, after its trip through the log."""
    body = {"id": "m", "payload": {"topic": topic, "flags": flag_bits, "blob": notify_blob(fields)}}
    state = ClientState(registered=True, provider=provider, token=token, version=1)
    command = PushToClient("t", "c", msgspec.json.encode(body))
    try:
        decision = decide_push(state, command, event_id="e", now=NOW)
    except InvalidRequest as refused:
        names = [e.name for e in refused.errors]
        decision = None
    if decision is None:
        assert "payload_too_large" in names
        return
    assert isinstance(decision, NotificationAccepted)
    stored = decode_event(encode_event(decision))
    assert isinstance(stored, NotificationAccepted)
    assert len(stored.blob or "") <= MAX_PROVIDER_PAYLOAD
    if provider == "fcm":
        sent = msgspec.json.encode(fcm_message(stored, token))
        assert fcm_data_size(stored) <= MAX_PROVIDER_PAYLOAD
        assert len(sent) == fcm_data_size(stored) + len(msgspec.json.encode(token)) + 21
    else:
        assert len(apns_body(stored)) <= MAX_PROVIDER_PAYLOAD
    assert apns_body(stored) == apns_body(decision)


@PROPERTY
@given(
    topic=topics,
    tag=st.integers(min_value=0, max_value=2**32 - 1),
    message=st.text(characters, min_size=1),
)
def test_a_raw_push_is_named_by_its_message(topic: str, tag: int, message: str) -> None:
    body = msgspec.json.encode({"topic": topic, "tag": tag, "message": message})
    push = parse_push(body, always_raw=True)
    assert isinstance(push, RawPush)
    assert len(push.message_id) == 64
    # an unregistered client reads either form: the drop is recorded under the same id
    dropped = decide_push(NO_CLIENT, PushToClient("t", "c", body), event_id="e", now=NOW)
    assert dropped.message_id == push.message_id


@PROPERTY
@given(message_id=ids, topic=topics, flag_bits=flags.map(lambda f: f | 1), blob=base64_blobs)
def test_an_encrypted_blob_is_kept_byte_for_byte(
    message_id: str, topic: str, flag_bits: int, blob: str
) -> None:
    body = {"id": message_id, "payload": {"topic": topic, "flags": flag_bits, "blob": blob}}
    outcome = parse_outcome(msgspec.json.encode(body), always_raw=False)
    if isinstance(outcome, LegacyPush):
        assert (outcome.blob, outcome.encrypted, outcome.notify) == (blob, True, None)
    else:
        assert outcome == ["id"]  # the only thing an encrypted push can get wrong here


# -- ids and subjects --------------------------------------------------------------------------


@PROPERTY
@given(value=st.one_of(ids, json_values), kind=st.sampled_from(["client", "tenant", "message"]))
def test_an_id_is_valid_or_refused_with_a_reason(value: object, kind: Any) -> None:
    normalised, why = id_problem(value, kind)
    if why is not None:
        assert normalised is None
        return
    assert isinstance(normalised, str)
    assert 1 <= len(normalised.encode()) <= MAX_ID_BYTES
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in normalised)
    if kind == "client":
        assert "/" not in normalised


@PROPERTY
@given(a=ids, b=ids)
def test_distinct_ids_never_share_a_subject(a: str, b: str) -> None:
    for kind in ("client", "message"):
        first, _ = id_problem(a, kind)
        second, _ = id_problem(b, kind)
        if first is None or second is None:
            continue
        wire_a, wire_b = encode_token(first), encode_token(second)
        assert decode_token(wire_a) == first
        assert not set(wire_a) & set(".*> \t")
        assert (wire_a == wire_b) == (first == second)
        subject_a = encode_subject("relaypush", ("t", "client", first))
        subject_b = encode_subject("relaypush", ("t", "client", second))
        assert (subject_a == subject_b) == (first == second)
        if first != second:
            assert dedup_key("t", first, "m") != dedup_key("t", second, "m")
            assert dedup_key("t", "c", first) != dedup_key("t", "c", second)


@PROPERTY
@given(client=ids, message=ids)
def test_the_longest_ids_fit_in_a_subject(client: str, message: str) -> None:
    c, _ = id_problem(client, "client")
    m, _ = id_problem(message, "message")
    assume(c is not None and m is not None)
    assert c is not None
    assert m is not None
    encode_subject("relaypush", ("t" * 255, "notification", c, m, "accepted"))


# -- relay signature headers -------------------------------------------------------------------

RELAY_KEY = Ed25519PrivateKey.generate()
RELAY_PUBLIC = RELAY_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
header_text = st.binary(max_size=200).map(lambda b: b.decode("latin-1"))


@PROPERTY
@given(signature=st.none() | header_text, timestamp=st.none() | header_text, body=st.binary())
def test_any_signature_headers_are_verified_or_refused(
    signature: str | None, timestamp: str | None, body: bytes
) -> None:
    verifier = RelaySignatureVerifier(RELAY_PUBLIC)
    # only a real signature by the relay verifies, and it cannot be forged by chance
    with pytest.raises(Unauthorized) as refused:
        verifier.verify(signature, timestamp, body)
    assert refused.value.fields
    assert all(f.location == "header" for f in refused.value.fields)


@PROPERTY
@given(body=st.binary(max_size=2000), skew=st.integers(min_value=-250, max_value=250))
def test_a_real_signature_verifies_once_and_for_its_body_only(body: bytes, skew: int) -> None:
    verifier = RelaySignatureVerifier(RELAY_PUBLIC)
    signature, timestamp = make_relay_signature(RELAY_KEY, int(time.time()) + skew, body)
    try:
        verifier.verify(signature, timestamp, body + b"x")
    except Unauthorized:
        pass
    else:
        raise AssertionError("a signature verified for another body")
    verifier.verify(signature, timestamp, body)
    try:
        verifier.verify(signature.upper(), timestamp, body)
    except Unauthorized:
        pass
    else:
        raise AssertionError("a replayed signature verified")
