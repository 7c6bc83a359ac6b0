"""Validation of the ids that come from outside: client, tenant and relay message ids.

As the relay contract's "Ids" section says, client ids and message ids are any UTF-8 text of 1
to 255 bytes without control characters (Unicode category Cc: U+0000 to U+001F and U+007F to
U+009F), as the reference server takes them: ``wallet.1``, ``a.*``, ``a.>`` and ``msg-ü-🔔`` are
ordinary ids. A client id stands in URL paths, so it holds no ``/``; a ``did:key:`` prefix on it
is stripped first. Nothing else is refused: the event log encodes every subject token
(:mod:`eventstore.subjects`), so no character of an id can reach another client's or message's
subject, and the read tables keep ids as text (no NUL, since NUL is a control character).

Tenant ids are chosen by operators and stand first in the client routes' paths
(``/{tenant_id}/clients``) and in the URLs the tenant routes answer: they stay 1 to 255
characters of ``A-Z a-z 0-9 _ -``, which no URL, subject or log line has to escape.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from relaypush.domain.errors import FieldError, InvalidRequest, Location

__all__ = [
    "DID_KEY_PREFIX",
    "MAX_ID_BYTES",
    "MAX_ID_LENGTH",
    "IdKind",
    "id_problem",
    "strip_did_key",
    "validate_id",
]

IdKind = Literal["client", "tenant", "message"]

DID_KEY_PREFIX: Final = "did:key:"
#: Longest client or message id, in bytes of UTF-8 (after a client id's ``did:key:`` prefix).
MAX_ID_BYTES: Final = 255
#: Longest tenant id, in characters (all ASCII).
MAX_ID_LENGTH: Final = 255

_TENANT: Final = re.compile(r"[A-Za-z0-9_-]{1,255}")
_TENANT_ALLOWED: Final = "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-'"
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_LOCATIONS: Final[dict[str, Location]] = {
    "body": "body",
    "query": "query",
    "header": "header",
    "path": "path",
}


def strip_did_key(client_id: str) -> str:
    """``client_id`` without a leading ``did:key:``."""
    if client_id.startswith(DID_KEY_PREFIX):
        return client_id[len(DID_KEY_PREFIX) :]
    return client_id


def id_problem(value: object, kind: IdKind) -> tuple[str, None] | tuple[None, str]:
    """``(normalised id, None)`` when ``value`` is a valid id of ``kind``, else ``(None, why)``.

    The exception-free form of :func:`validate_id`, for parsers that collect every bad field.
    """
    if not isinstance(value, str):
        return None, "must be a string"
    if kind == "client":
        value = strip_did_key(value)
    if not value:
        return None, "must not be empty"
    if kind == "tenant":
        return (value, None) if _TENANT.fullmatch(value) else (None, _TENANT_ALLOWED)
    # Cheap bound first: a str of more than 255 characters is more than 255 bytes.
    if len(value) > MAX_ID_BYTES:
        return None, f"must be at most {MAX_ID_BYTES} bytes of UTF-8, got {len(value)} characters"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None, "must be UTF-8 text (it holds a lone surrogate)"
    if size > MAX_ID_BYTES:
        return None, f"must be at most {MAX_ID_BYTES} bytes of UTF-8, got {size}"
    control = _CONTROL.search(value)
    if control is not None:
        return None, (
            f"must not contain control characters (U+{ord(control.group()):04X} "
            f"at character {control.start()})"
        )
    if kind == "client" and "/" in value:
        return None, "must not contain '/': a client id stands in URL paths"
    return value, None


def validate_id(value: object, *, field: str, location: str, kind: IdKind) -> str:
    """The id in ``value``, normalised (``did:key:`` stripped from client ids).

    Raises ``InvalidRequest`` with one ``FieldError`` naming ``field`` at ``location`` and saying
    what is allowed. ``location`` is one of ``body``, ``query``, ``header``, ``path``.
    """
    loc = _LOCATIONS.get(location)
    if loc is None:
        raise ValueError(f"unknown field location {location!r}")
    normalised, problem = id_problem(value, kind)
    if problem is not None:
        raise InvalidRequest(fields=(FieldError(field, problem, loc),))
    assert normalised is not None
    return normalised
