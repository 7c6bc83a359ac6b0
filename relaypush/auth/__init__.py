"""Authentication: the relay's Ed25519 signature on pushes and the wallet's JWT on registration.

Both raise ``relaypush.domain.errors.Unauthorized`` (HTTP 401) with the header at fault.
"""

from relaypush.auth.client_jwt import (
    did_key_to_ed25519,
    ed25519_to_did_key,
    make_client_jwt,
    verify_client_jwt,
)
from relaypush.auth.relay_signature import RelaySignatureVerifier, make_relay_signature

__all__ = [
    "RelaySignatureVerifier",
    "did_key_to_ed25519",
    "ed25519_to_did_key",
    "make_client_jwt",
    "make_relay_signature",
    "verify_client_jwt",
]
