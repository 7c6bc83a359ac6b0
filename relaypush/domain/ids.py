"""Validation of the ids that come from outside: client, tenant and relay message ids.

Client ids are the relay's did:key identifiers (base58btc, so ``[A-Za-z0-9]``); a ``did:key:``
prefix is stripped first. Tenant ids are chosen by operators. Message ids come from the relay and
may hold ``:``, ``+``, ``/`` and ``=`` as well. Nothing else is allowed, so an id can never carry
``.``, ``*``, ``>``, whitespace or unicode into a subject, a log line or a URL.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from relaypush.domain.errors import FieldError, InvalidRequest, Location

__all__ = [
    "DID_KEY_PREFIX",
    "MAX_ID_LENGTH",
    "IdKind",
    "id_problem",
    "strip_did_key",
    "validate_id",
]

IdKind = Literal["client", "tenant", "message"]

DID_KEY_PREFIX: Final = "did:key:"
MAX_ID_LENGTH: Final = 255

_PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    "client": re.compile(r"[A-Za-z0-9_-]{1,255}"),
    "tenant": re.compile(r"[A-Za-z0-9_-]{1,255}"),
    "message": re.compile(r"[A-Za-z0-9_\-:+/=]{1,255}"),
}

_ALLOWED: Final[dict[str, str]] = {
    "client": "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-' "
    "(after an optional 'did:key:' prefix)",
    "tenant": "must be 1 to 255 characters of A-Z, a-z, 0-9, '_' and '-'",
    "message": "must be 1 to 255 characters of A-Z, a-z, 0-9 and '_', '-', ':', '+', '/', '='",
}

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
    if _PATTERNS[kind].fullmatch(value) is None:
        return None, _ALLOWED[kind]
    return value, None


def validate_id(
    value: object, *, field: str, location: str, kind: Literal["client", "tenant", "message"]
) -> str:
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
