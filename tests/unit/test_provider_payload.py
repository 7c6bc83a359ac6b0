"""The exact bytes APNs and FCM receive, the apns-id, and the 4096-byte limit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
import pytest

from relaypush.domain.errors import ErrorInfo, InvalidRequest
from relaypush.domain.events import NotificationAccepted, NotifyMessage, ProviderType, RawMessage
from relaypush.domain.provider_payload import (
    APNS_ID_NAMESPACE,
    MAX_PROVIDER_PAYLOAD,
    apns_body,
    apns_id,
    check_payload_size,
    fcm_data_size,
    fcm_message,
)

TOPIC = "7f6e"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def accepted(
    *,
    flags: int = 17,
    blob: str | None = "ENC+/blob==",
    notify: NotifyMessage | None = None,
    raw: RawMessage | None = None,
    topic: str = TOPIC,
) -> NotificationAccepted:
    return NotificationAccepted(
        event_id="e1",
        occurred_at=AT,
        tenant_id="t1",
        client_id="c1",
        message_id="m1",
        dedup_key="k",
        topic=topic,
        flags=flags,
        encrypted=bool(flags & 1),
        blob=blob,
        notify=notify,
        raw=raw,
    )


def encrypted(blob: str = "ENC+/blob==") -> NotificationAccepted:
    return accepted(flags=17, blob=blob)


def cleartext(title: str = "Hi \u2603", body: str = 'say "x"') -> NotificationAccepted:
    return accepted(
        flags=16, blob="eyJ0aXRsZSI6ICJIaSJ9", notify=NotifyMessage(title=title, body=body)
    )


def raw(message: str = "opaque") -> NotificationAccepted:
    return accepted(flags=0, blob=None, raw=RawMessage(topic=TOPIC, tag=4002, message=message))


# -- APNs ------------------------------------------------------------------------------------


def test_apns_encrypted_body() -> None:
    assert apns_body(encrypted()) == (
        b'{"aps":{"alert":{"title":"You have new notifications. Open to view"},'
        b'"content-available":1,"mutable-content":1},'
        b'"topic":"7f6e","blob":"ENC+/blob==","flags":17}'
    )


def test_apns_cleartext_body() -> None:
    assert apns_body(cleartext()) == (
        b'{"aps":{"alert":{"title":"Hi \xe2\x98\x83","body":"say \\"x\\""},'
        b'"content-available":1,"mutable-content":1},"topic":"7f6e"}'
    )


def test_apns_raw_body() -> None:
    assert apns_body(raw()) == (
        b'{"aps":{"alert":{"title":"You have new notifications. Open to view"},'
        b'"content-available":1,"mutable-content":1},'
        b'"topic":"7f6e","tag":4002,"message":"opaque"}'
    )


def test_notify_flag_without_encryption_but_no_decoded_message_sends_the_blob() -> None:
    body = msgspec.json.decode(apns_body(accepted(flags=16, blob="b")))
    assert body["blob"] == "b"
    assert body["flags"] == 16


@pytest.mark.parametrize("blob", ["a/b+c==", "x" * 3000, "\u00e9</script>&"])
def test_apns_blob_is_forwarded_byte_for_byte(blob: str) -> None:
    encoded = apns_body(encrypted(blob))
    assert b'"blob":"' + blob.encode() + b'"' in encoded


def test_encrypted_flag_wins_over_a_notify_message() -> None:
    n = accepted(flags=17, blob="B", notify=NotifyMessage(title="t", body="b"))
    assert b'"blob":"B"' in apns_body(n)
    assert b'"body"' not in apns_body(n)


def test_a_notification_with_no_blob_and_no_raw_message_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="m1"):
        apns_body(accepted(flags=17, blob=None))


def test_apns_id_is_a_stable_uuid5() -> None:
    value = apns_id("t", "c", "m")
    assert value == "441aa36b-840f-51a3-85ae-1a4d0eb82fcd"
    assert uuid.UUID(value).version == 5
    assert apns_id("t", "c", "m") == value


@pytest.mark.parametrize(
    "ids",
    [
        ("t", "c", "m"),
        ("0000-0000-0000-0000", "wallet-1", "abc:1/2="),
        ("t\u00e9", "\u2603", "x" * 255),
    ],
)
def test_apns_id_is_uuid5_of_the_joined_ids(ids: tuple[str, str, str]) -> None:
    assert apns_id(*ids) == str(uuid.uuid5(APNS_ID_NAMESPACE, "\x00".join(ids)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("t", "c1", "m"), ("t", "c2", "m")),
        (("t1", "c", "m"), ("t2", "c", "m")),
        (("t", "c", "m1"), ("t", "c", "m2")),
        (("t", "ab", "c"), ("t", "a", "bc")),
        (("ta", "b", "c"), ("t", "ab", "c")),
    ],
)
def test_apns_id_differs_per_tenant_client_and_message(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    assert apns_id(*a) != apns_id(*b)


# -- FCM -------------------------------------------------------------------------------------


def test_fcm_encrypted_message() -> None:
    message = fcm_message(encrypted(), "device-token")
    assert msgspec.json.encode(message) == (
        b'{"message":{"token":"device-token",'
        b'"data":{"topic":"7f6e","flags":"17","blob":"ENC+/blob=="},'
        b'"android":{"priority":"HIGH"},'
        b'"apns":{"payload":{"aps":{"content-available":1}}}}}'
    )


def test_fcm_cleartext_message_adds_notification() -> None:
    message = fcm_message(cleartext(title="T", body="B"), "tok")
    assert msgspec.json.encode(message) == (
        b'{"message":{"token":"tok",'
        b'"data":{"topic":"7f6e","flags":"16","blob":"eyJ0aXRsZSI6ICJIaSJ9"},'
        b'"android":{"priority":"HIGH"},'
        b'"apns":{"payload":{"aps":{"content-available":1}}},'
        b'"notification":{"title":"T","body":"B"}}}'
    )


def test_fcm_raw_message() -> None:
    message = fcm_message(raw(), "tok")
    assert msgspec.json.encode(message) == (
        b'{"message":{"token":"tok",'
        b'"data":{"topic":"7f6e","tag":"4002","message":"opaque"},'
        b'"android":{"priority":"HIGH"},'
        b'"apns":{"payload":{"aps":{"content-available":1}}}}}'
    )


@pytest.mark.parametrize("n", [encrypted(), cleartext(), raw()], ids=["enc", "clear", "raw"])
def test_fcm_data_values_are_all_strings(n: NotificationAccepted) -> None:
    document = msgspec.json.decode(msgspec.json.encode(fcm_message(n, "tok")))
    assert all(isinstance(v, str) for v in document["message"]["data"].values())


def test_fcm_data_size_excludes_the_token() -> None:
    n = encrypted()
    with_token = len(msgspec.json.encode(fcm_message(n, "tok")["message"]))
    assert fcm_data_size(n) == with_token - len(b'"token":"tok",')


def test_fcm_messages_do_not_share_mutable_parts() -> None:
    first = fcm_message(encrypted(), "a")
    inner = first["message"]
    assert isinstance(inner, dict)
    inner["android"] = {"priority": "NORMAL"}
    assert msgspec.json.encode(fcm_message(encrypted(), "b")).count(b'"HIGH"') == 1


# -- size limit ------------------------------------------------------------------------------


def apns_overhead() -> int:
    return len(apns_body(encrypted("x"))) - 1


def fcm_overhead() -> int:
    return fcm_data_size(encrypted("x")) - 1


@pytest.mark.parametrize("provider", ["apns", "apns-sandbox", "noop"])
def test_apns_body_of_exactly_the_limit_passes(provider: ProviderType) -> None:
    n = encrypted("x" * (MAX_PROVIDER_PAYLOAD - apns_overhead()))
    assert len(apns_body(n)) == MAX_PROVIDER_PAYLOAD
    check_payload_size(n, provider)


@pytest.mark.parametrize("provider", ["apns", "apns-sandbox", "noop"])
def test_apns_body_one_byte_over_is_refused(provider: ProviderType) -> None:
    n = encrypted("x" * (MAX_PROVIDER_PAYLOAD - apns_overhead() + 1))
    with pytest.raises(InvalidRequest) as info:
        check_payload_size(n, provider)
    assert [e.name for e in info.value.errors] == ["payload_too_large"]
    assert [(f.field, f.location) for f in info.value.fields] == [("payload", "body")]
    assert "4097" in info.value.fields[0].description


def test_fcm_message_of_exactly_the_limit_passes() -> None:
    n = encrypted("x" * (MAX_PROVIDER_PAYLOAD - fcm_overhead()))
    assert fcm_data_size(n) == MAX_PROVIDER_PAYLOAD
    check_payload_size(n, "fcm")


def test_fcm_message_one_byte_over_is_refused() -> None:
    n = encrypted("x" * (MAX_PROVIDER_PAYLOAD - fcm_overhead() + 1))
    with pytest.raises(InvalidRequest) as info:
        check_payload_size(n, "fcm")
    assert info.value.errors == (
        ErrorInfo(
            "payload_too_large", "the fcm payload would be 4097 bytes, over the limit of 4096 bytes"
        ),
    )
    assert [f.field for f in info.value.fields] == ["payload"]


def test_each_provider_measures_its_own_body() -> None:
    # An encrypted blob that fits FCM's smaller envelope but not the APNs one.
    assert apns_overhead() > fcm_overhead()
    n = encrypted("x" * (MAX_PROVIDER_PAYLOAD - fcm_overhead()))
    check_payload_size(n, "fcm")
    with pytest.raises(InvalidRequest):
        check_payload_size(n, "apns")
    # A cleartext message: FCM carries the blob and the notification, APNs only the alert.
    big = cleartext(title="t" * 2000, body="b")
    big = accepted(flags=16, blob="B" * 2700, notify=big.notify)
    check_payload_size(big, "apns")
    with pytest.raises(InvalidRequest):
        check_payload_size(big, "fcm")


def test_raw_message_over_the_limit_names_message() -> None:
    n = raw("m" * MAX_PROVIDER_PAYLOAD)
    with pytest.raises(InvalidRequest) as info:
        check_payload_size(n, "apns")
    assert [f.field for f in info.value.fields] == ["message"]
    assert [e.name for e in info.value.errors] == ["payload_too_large"]


def test_size_counts_utf8_bytes_not_characters() -> None:
    # 1,400 snowmen are 1,400 characters but 4,200 bytes in UTF-8.
    title = "\u2603" * 1400
    n = accepted(flags=16, blob="B", notify=NotifyMessage(title=title, body="b"))
    assert len(apns_body(n).decode()) < MAX_PROVIDER_PAYLOAD < len(apns_body(n))
    with pytest.raises(InvalidRequest):
        check_payload_size(n, "apns")


@pytest.mark.parametrize("provider", ["apns", "apns-sandbox", "noop", "fcm"])
def test_a_cleartext_blob_over_the_limit_is_refused_whatever_the_provider(
    provider: ProviderType,
) -> None:
    # The APNs body carries the title and body alone, so it is small; the blob is not (a
    # Notify message with a long icon, say), and FCM would carry it whole.
    n = accepted(
        flags=16, blob="B" * (MAX_PROVIDER_PAYLOAD + 1), notify=NotifyMessage(title="t", body="b")
    )
    assert len(apns_body(n)) < 200
    with pytest.raises(InvalidRequest) as info:
        check_payload_size(n, provider)
    assert [e.name for e in info.value.errors] == ["payload_too_large"]
    assert [(f.field, f.location) for f in info.value.fields] == [("payload.blob", "body")]
    assert "4097 bytes" in info.value.fields[0].description


def test_a_cleartext_blob_of_exactly_the_limit_passes_for_apns() -> None:
    n = accepted(
        flags=16, blob="B" * MAX_PROVIDER_PAYLOAD, notify=NotifyMessage(title="t", body="b")
    )
    check_payload_size(n, "apns")
    with pytest.raises(InvalidRequest):  # FCM carries the blob and the alert: over
        check_payload_size(n, "fcm")


def test_an_encrypted_blob_is_bounded_by_the_provider_body_alone() -> None:
    n = encrypted("x" * (MAX_PROVIDER_PAYLOAD - apns_overhead()))
    check_payload_size(n, "apns")
