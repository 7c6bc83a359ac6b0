"""Throwaway certificates for stand-ins: a CA and server certificate, and client certificates.

The stand-ins' CA and server certificates come from trustme. APNs client certificates are made
here with ``cryptography``: Apple puts the app's bundle id in the subject's UID attribute, which
trustme cannot write. Everything is P-256; nothing here is meant for production use.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme
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
    ca = trustme.CA(organization_name="relaypush stand-in CA")
    leaf = ca.issue_cert(*dict.fromkeys(["localhost", "127.0.0.1", host]))
    files = ServerFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_file))
    files.cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key_file))
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
