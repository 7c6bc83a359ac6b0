"""The rule for user headers on events, the same for every event-log implementation.

Names must be HTTP header tokens and must not start with ``Nats-`` (those are the server's);
values must be single lines without surrounding space, which NATS would otherwise rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["checked_headers"]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """A fresh copy of ``headers``; ``ValueError`` naming the first header that breaks the rule."""
    if not headers:
        return {}
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or name[:5].lower() == "nats-":
            raise ValueError(f"invalid event header name {name!r}")
        if value != value.strip() or "\r" in value or "\n" in value:
            raise ValueError(f"event header {name!r} has surrounding space or a line break")
    return dict(headers)
