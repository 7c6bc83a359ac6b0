"""The .p12 upload: its key derivations are counted before any is run, and it opens in a thread.

A PKCS#12 file says itself how many iterations its MAC and its encrypted parts take; OpenSSL
runs them all, holding the GIL. A file asking for billions is refused from its structure alone
(:mod:`relaypush.tenancy.pkcs12`), naming ``apns_certificate``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from cryptography.x509.oid import NameOID

from relaypush.domain.credentials import ApnsCertificateFile
from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.metrics import Registry
from relaypush.tenancy.checks import MAX_KDF_ITERATIONS, ApnsForm, CredentialChecker, _off_the_loop
from relaypush.tenancy.pkcs12 import kdf_costs, pem_blocks

TOPIC = "com.example.wallet"
PASSWORD = "pw"


def certificate() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services: " + TOPIC),
            x509.NameAttribute(NameOID.USER_ID, TOPIC),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def p12(rounds: int) -> bytes:
    key, cert = certificate()
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(rounds)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(PASSWORD.encode())
    )
    return pkcs12.serialize_key_and_certificates(b"apns", key, cert, None, encryption)


def der(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = (len(body).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(body).to_bytes(size, "big") + body


def integer(value: int) -> bytes:
    return der(0x02, value.to_bytes((value.bit_length() + 8) // 8, "big"))


DATA_OID = der(0x06, bytes.fromhex("2a864886f70d010701"))
SHA1_OID = der(0x06, bytes.fromhex("2b0e03021a"))


def pfx_with_mac_iterations(iterations: int) -> bytes:
    """A PFX holding nothing, whose MAC asks for ``iterations``: what OpenSSL would run first."""
    auth_safe = der(0x30, DATA_OID, der(0xA0, der(0x04, der(0x30))))
    digest = der(0x30, der(0x30, SHA1_OID, der(0x05)), der(0x04, bytes(20)))
    mac = der(0x30, digest, der(0x04, bytes(8)), integer(iterations))
    return der(0x30, integer(3), auth_safe, mac)


def checker(timeout: float = 10.0) -> CredentialChecker:
    return CredentialChecker(metrics=Registry(), timeout=timeout)


def form(data: bytes | str) -> ApnsForm:
    return ApnsForm(topic=TOPIC, certificate=data, certificate_password=PASSWORD)


async def refusal(data: bytes | str) -> tuple[FieldError, ...]:
    with pytest.raises(InvalidRequest) as info:
        await checker().check_apns(form(data))
    return info.value.fields


def test_the_counts_are_read_from_the_structure() -> None:
    assert kdf_costs(p12(2048)) == [2048, 2048, 2048]
    assert kdf_costs(pfx_with_mac_iterations(2**40)) == [2**40]


@pytest.mark.parametrize("bad", [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x1f\x00", b"GIF"])
def test_what_is_not_ber_is_a_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        kdf_costs(bad)


async def test_a_usual_p12_is_checked_and_kept() -> None:
    data = p12(2048)
    credential = await checker().check_apns(form(data))
    assert credential == ApnsCertificateFile(topic=TOPIC, p12=data, password=PASSWORD)


@pytest.mark.parametrize("iterations", [2**31 - 1, 2**40, 10**30])
async def test_a_mac_asking_for_billions_of_iterations_is_refused_before_any_is_run(
    iterations: int,
) -> None:
    fields = await refusal(pfx_with_mac_iterations(iterations))
    assert [(f.field, f.location) for f in fields] == [("apns_certificate", "body")]
    assert str(iterations) in fields[0].description


async def test_encrypted_parts_over_the_cap_are_refused_naming_the_certificate() -> None:
    data = p12(MAX_KDF_ITERATIONS)  # three derivations of this many: over the cap in all
    fields = await refusal(data)
    assert [f.field for f in fields] == ["apns_certificate"]
    assert "iterations" in fields[0].description


async def test_the_count_is_read_through_base64_text_fields_too() -> None:
    fields = await refusal(base64.b64encode(pfx_with_mac_iterations(2**40)).decode())
    assert [f.field for f in fields] == ["apns_certificate"]


def oid(hex_value: str) -> bytes:
    return der(0x06, bytes.fromhex(hex_value))


def encrypted_pkcs8_asking(iterations: int) -> bytes:
    """An EncryptedPrivateKeyInfo (PBES2, PBKDF2, AES-256-CBC) whose PBKDF2 asks for
    ``iterations``, as PEM: the count is all that matters, the ciphertext is noise."""
    pbkdf2 = der(
        0x30, oid("2a864886f70d01050c"), der(0x30, der(0x04, bytes(16)), integer(iterations))
    )
    aes = der(0x30, oid("60864801650304012a"), der(0x04, bytes(16)))  # aes256-CBC
    pbes2 = der(0x30, oid("2a864886f70d01050d"), der(0x30, pbkdf2, aes))
    info = der(0x30, pbes2, der(0x04, bytes(48)))
    body = base64.encodebytes(info)
    return (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + body + b"-----END ENCRYPTED PRIVATE KEY-----\n"
    )


async def test_a_pem_with_an_encrypted_key_asking_too_much_is_refused() -> None:
    _, cert = certificate()
    pem = cert.public_bytes(serialization.Encoding.PEM) + encrypted_pkcs8_asking(2**40)
    assert kdf_costs_of_pem(pem) == [2**40]
    fields = await refusal(pem)
    assert [f.field for f in fields] == ["apns_certificate"]
    assert str(2**40) in fields[0].description


async def test_a_pem_with_a_usual_encrypted_key_opens() -> None:
    key, cert = certificate()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        BestAvailableEncryption(PASSWORD.encode()),
    )
    assert kdf_costs_of_pem(encrypted)
    pem = cert.public_bytes(serialization.Encoding.PEM) + encrypted
    assert await checker().check_apns(form(pem))


def kdf_costs_of_pem(pem: bytes) -> list[int]:
    return [c for block in pem_blocks(pem) for c in kdf_costs(block)]


async def test_work_that_outlives_its_timeout_is_refused_and_abandoned() -> None:
    release = threading.Event()
    finished = threading.Event()

    def stuck() -> str:
        release.wait()
        finished.set()
        return "late"

    too_slow = FieldError("apns_certificate", "too slow")
    with pytest.raises(InvalidRequest) as info:
        await _off_the_loop(stuck, within=0.05, too_slow=too_slow)
    assert info.value.fields == (too_slow,)
    release.set()
    await asyncio.to_thread(finished.wait)


async def test_work_that_fails_in_the_thread_raises_its_error() -> None:
    def broken() -> str:
        raise InvalidRequest(fields=(FieldError("apns_certificate", "bad"),))

    with pytest.raises(InvalidRequest):
        await _off_the_loop(broken, within=5, too_slow=FieldError("x", "y"))
    assert await _off_the_loop(lambda: 42, within=5, too_slow=FieldError("x", "y")) == 42
