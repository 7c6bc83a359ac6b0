"""Errors the domain raises when a request cannot be accepted.

    Exception
     └── DomainError            root of every error raised by relaypush.domain
          ├── InvalidRequest     the request's shape is wrong          -> HTTP 400
          └── Unauthorized       authentication missing or wrong       -> HTTP 401

``InvalidRequest`` and ``Unauthorized`` carry what the relay envelope reports: ``fields`` (the
user-supplied fields at fault, each with where it was found) and ``errors`` (generic, named
errors such as ``payload_too_large``). The HTTP layer turns them into the envelope in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DomainError",
    "ErrorInfo",
    "FieldError",
    "InvalidRequest",
    "Location",
    "Unauthorized",
]

Location = Literal["body", "query", "header", "path"]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One user-supplied field that caused an error, and where it was found."""

    field: str
    description: str
    location: Location = "body"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A generic, named error (``payload_too_large``, ``provider_not_available``, ...)."""

    name: str
    description: str


class DomainError(Exception):
    """Root of every error raised by ``relaypush.domain``."""


class _RequestRejected(DomainError):
    """A request refused because of what the client sent: fields at fault and named errors."""

    fields: tuple[FieldError, ...]
    errors: tuple[ErrorInfo, ...]

    def __init__(
        self, *, fields: Iterable[FieldError] = (), errors: Iterable[ErrorInfo] = ()
    ) -> None:
        self.fields = tuple(fields)
        self.errors = tuple(errors)
        super().__init__(self._summary())

    def _summary(self) -> str:
        parts = [f"{e.name}: {e.description}" for e in self.errors]
        parts += [f"{f.field} ({f.location}): {f.description}" for f in self.fields]
        return "; ".join(parts) or type(self).__name__

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructor: rebuild through a helper so pickle and copy work.
        return (_rebuild, (type(self), self.fields, self.errors))


def _rebuild(
    cls: type[_RequestRejected], fields: tuple[FieldError, ...], errors: tuple[ErrorInfo, ...]
) -> _RequestRejected:
    return cls(fields=fields, errors=errors)


class InvalidRequest(_RequestRejected):
    """The request's shape is wrong (HTTP 400): bad JSON, bad fields, payload too large."""


class Unauthorized(_RequestRejected):
    """Authentication is missing or wrong (HTTP 401); ``fields`` name the header(s)."""
