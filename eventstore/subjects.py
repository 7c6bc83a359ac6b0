"""Encoding of subject tokens.

A subject is a tuple of tokens chosen by the caller (``("0000", "client", "wallet.1")``). On the
wire each token is encoded so that no character in it can change routing: NATS splits subjects on
``.``, treats ``*`` and ``>`` as wildcards and forbids white space. Every byte outside
``[A-Za-z0-9_-]`` is written as ``=XX`` (upper-case hex of its UTF-8 bytes), ``=`` included, so
the encoding is reversible and the encoded token is a plain literal.

A wire subject (prefix included) may be at most :data:`MAX_SUBJECT_LENGTH` characters: NATS
closes the connection of a client that sends a protocol line longer than 4 KiB, and the subject
also travels inside API request subjects (direct gets, consumer creation), so longer subjects are
refused up front with :class:`~eventstore.errors.InvalidSubject`.
"""

from __future__ import annotations

import re
from typing import Final

from eventstore.errors import InvalidSubject
from eventstore.log import REST, Wildcard

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "decode_subject",
    "decode_token",
    "encode_filter",
    "encode_subject",
    "encode_token",
]

MAX_SUBJECT_LENGTH: Final = 3072
"""Longest wire subject (prefix, dots and encoded tokens) the log accepts."""

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPE = re.compile(r"=([0-9A-F]{2})")
_ENCODED = re.compile(r"(?:[A-Za-z0-9_-]|=[0-9A-F]{2})+")


def encode_token(token: str) -> str:
    """Encode one token so that it is a literal NATS subject token."""
    if not token:
        raise InvalidSubject("subject tokens must not be empty")
    if _PLAIN.fullmatch(token):
        return token
    try:
        raw = token.encode()
    except UnicodeEncodeError as exc:
        raise InvalidSubject(f"subject token is not valid unicode: {token!r}") from exc
    return "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)


def decode_token(token: str) -> str:
    """Reverse :func:`encode_token`; raises InvalidSubject for text it cannot have produced."""
    if _PLAIN.fullmatch(token):
        return token
    if not _ENCODED.fullmatch(token):
        raise InvalidSubject(f"not an encoded subject token: {token!r}")
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), token).encode("latin-1")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidSubject(f"not an encoded subject token: {token!r}") from exc


def encode_subject(prefix: str, tokens: tuple[str, ...]) -> str:
    """Join ``prefix`` (trusted, may contain dots) and the encoded ``tokens``."""
    if not tokens:
        raise InvalidSubject("a subject needs at least one token")
    return _checked_length(".".join((prefix, *(encode_token(t) for t in tokens))))


def encode_filter(prefix: str, tokens: tuple[str | Wildcard, ...]) -> str:
    """Like :func:`encode_subject`, with ``ANY`` written as ``*`` and ``REST`` (last only) as
    ``>``."""
    if not tokens:
        raise InvalidSubject("a subject filter needs at least one token")
    parts = [prefix]
    last = len(tokens) - 1
    for index, token in enumerate(tokens):
        if isinstance(token, Wildcard):
            if token.wire not in ("*", ">"):
                raise InvalidSubject(f"unknown wildcard {token.wire!r}")
            if token == REST and index != last:
                raise InvalidSubject("REST may only be the last token of a filter")
            parts.append(token.wire)
        else:
            parts.append(encode_token(token))
    return _checked_length(".".join(parts))


def decode_subject(prefix: str, subject: str) -> tuple[str, ...]:
    """Split a wire subject under ``prefix`` back into its decoded tokens."""
    if not subject.startswith(prefix + "."):
        raise InvalidSubject(f"subject {subject[:80]!r} is not under prefix {prefix!r}")
    return tuple(decode_token(t) for t in subject[len(prefix) + 1 :].split("."))


def _checked_length(wire: str) -> str:
    if len(wire) > MAX_SUBJECT_LENGTH:
        raise InvalidSubject(
            f"encoded subject is {len(wire)} characters long, at most {MAX_SUBJECT_LENGTH} allowed"
        )
    return wire
