"""Throwaway certificates for stand-ins: a CA and server certificate, and client certificates.

Everything is P-256 and short-lived; nothing here is meant for production use.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ClientCertificate", "ServerFiles", "issue_server_certificate", "self_signed_client"]


@dataclass(frozen=True, slots=True)
class ServerFiles:
    """PEM files: the CA to trust, and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A self-signed client certificate and its key, as PEM and as PKCS#12."""

    cert_pem: bytes
    key_pem: bytes
    password: str

    @property
    def pem(self) -> bytes:
        """Certificate and unencrypted key in one PEM file, as APNs ``.pem`` exports hold them."""
        return self.cert_pem + self.key_pem

    def p12(self) -> bytes:
        """The same certificate and key as PKCS#12, encrypted with :attr:`password`."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        encryption = serialization.BestAvailableEncryption(self.password.encode())
        return pkcs12.serialize_key_and_certificates(b"apns", key, cert, None, encryption)


def issue_server_certificate(directory: Path, host: str) -> ServerFiles:
    """A new CA and a server certificate it signed, for ``127.0.0.1``, ``localhost`` and
    ``host``, written as ``ca.pem``, ``server.pem`` and ``server.key`` under ``directory``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("relaypush stand-in CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), days=2)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name("localhost"), ca_name, key.public_key(), days=1)
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = ServerFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(_key_pem(key))
    return files


def self_signed_client(
    common_name: str, *, user_id: str | None = None, password: str | None = None
) -> ClientCertificate:
    """A self-signed TLS client certificate; ``user_id`` goes into the subject's UID, where
    Apple puts an APNs certificate's bundle id. ``password`` (random by default) protects
    the PKCS#12 form."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if user_id is not None:
        attributes.append(x509.NameAttribute(NameOID.USER_ID, user_id))
    name = x509.Name(attributes)
    cert = (
        _builder(name, name, key.public_key(), days=1)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ClientCertificate(
        cert.public_bytes(serialization.Encoding.PEM),
        _key_pem(key),
        password if password is not None else secrets.token_urlsafe(12),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, *, days: int
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
