"""The stand-ins' certificates: a CA (from trustme) and a server certificate for the host."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from relaypush.testing.tls import issue_server_certificate


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("push.test", x509.DNSName("push.test")),
        ("::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
    ],
)
def test_the_server_certificate_names_loopback_and_the_host(
    tmp_path: Path, host: str, name: x509.GeneralName
) -> None:
    files = issue_server_certificate(tmp_path, host)
    leaf = x509.load_pem_x509_certificates(files.cert_file.read_bytes())[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert x509.DNSName("localhost") in names
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in names
    assert name in names
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.cert_file, files.key_file)  # the key is the certificate's
    client = ssl.create_default_context(cafile=str(files.ca_file))
    assert client.cert_store_stats()["x509_ca"] == 1
