"""The request headers relaypush acts on, read as printable ASCII or refused with a 4xx.

litestar decodes header bytes as latin-1, so a client can put any byte in a header; what reads
them further in (relay signatures, JWTs, addresses) expects ASCII text and could fail on
anything else with a 500. The headers are therefore read here:

    Authorization, X-Ed25519-Signature, X-Ed25519-Timestamp    401 naming the header
    X-Forwarded-For (read by the rate limit, with printable_ascii)  400 naming the header

A value is accepted when every character is printable ASCII (space to ``~``) or a tab.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from relaypush.domain.errors import FieldError, Unauthorized

__all__ = ["credential_header", "printable_ascii", "verified_token"]

T = TypeVar("T")

_PRINTABLE: Final = re.compile(r"[\t\x20-\x7e]*")
_NOT_ASCII: Final = "must be printable ASCII"


def printable_ascii(value: str) -> bool:
    """Whether ``value`` holds only printable ASCII characters and tabs."""
    return _PRINTABLE.fullmatch(value) is not None


def credential_header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of an authentication header, None when absent; ``Unauthorized`` naming it
    when it is not printable ASCII."""
    value = headers.get(name.lower())
    if value is not None and not printable_ascii(value):
        raise Unauthorized(fields=(FieldError(name, _NOT_ASCII, "header"),))
    return value


def verified_token(verify: Callable[[], T], header: str = "Authorization") -> T:
    """``verify()``'s result; JSON inside a token nested deeper than the decoder allows is a
    ``RecursionError`` there, refused here as a malformed token (401 naming ``header``)."""
    try:
        return verify()
    except RecursionError:
        raise Unauthorized(
            fields=(FieldError(header, "malformed JWT: its JSON is nested too deeply", "header"),)
        ) from None
