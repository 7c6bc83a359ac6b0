"""The relay envelope: the JSON bodies every relaypush response carries.

Success is ``{"status": "OK"}``; failure is ``{"status": "FAILED", "errors": [...], "fields":
[...]}`` with ``errors`` naming generic problems and ``fields`` naming the user-supplied fields at
fault and where they were found. Success bodies are encoded once, at import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from relaypush.domain.errors import ErrorInfo, FieldError, Location

__all__ = [
    "OK_BODY",
    "ErrorEntry",
    "FailedBody",
    "FieldEntry",
    "OkBody",
    "failed_body",
]


class ErrorEntry(msgspec.Struct, frozen=True):
    """A generic, named error."""

    name: str
    description: str


class FieldEntry(msgspec.Struct, frozen=True):
    """A user-supplied field that caused the error."""

    field: str
    description: str
    location: Location


class OkBody(msgspec.Struct, frozen=True):
    """The success envelope."""

    status: Literal["OK"] = "OK"


class FailedBody(msgspec.Struct, frozen=True, kw_only=True):
    """The failure envelope."""

    status: Literal["FAILED"] = "FAILED"
    errors: list[ErrorEntry]
    fields: list[FieldEntry]


_encode: Final = msgspec.json.encode

OK_BODY: Final = _encode(OkBody())


def failed_body(errors: Iterable[ErrorInfo] = (), fields: Iterable[FieldError] = ()) -> bytes:
    """The encoded failure envelope for ``errors`` and ``fields``."""
    return _encode(
        FailedBody(
            errors=[ErrorEntry(e.name, e.description) for e in errors],
            fields=[FieldEntry(f.field, f.description, f.location) for f in fields],
        )
    )
