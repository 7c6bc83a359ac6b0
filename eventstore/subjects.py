"""Encoding of subject tokens.

A subject is a tuple of tokens chosen by the caller (``("0000", "client", "wallet.1")``). On the
wire each token is encoded so that no character in it can change routing: NATS splits subjects on
``.``, treats ``*`` and ``>`` as wildcards and forbids white space. Every byte outside
``[A-Za-z0-9_-]`` is written as ``=XX`` (upper-case hex of its UTF-8 bytes), ``=`` included, so
the encoding is reversible and the encoded token is a plain literal.
"""

from __future__ import annotations


from eventstore.errors import InvalidSubject

__all__ = ["decode_subject", "decode_token", "encode_subject", "encode_token"]

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def encode_token(token: str) -> str:
    """Encode one token so that it is a literal NATS subject token."""
    if not token:
        raise InvalidSubject("subject tokens must not be empty")
    raw = token.encode()
    if all(b in _SAFE for b in raw):
        return token
    return "".join(chr(b) if b in _SAFE else f"={b:02X}" for b in raw)


def decode_token(token: str) -> str:
    """Reverse :func:`encode_token`."""
    if "=" not in token:
        return token
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    return out.decode()


def encode_subject(prefix: str, tokens: tuple[str, ...]) -> str:
    """Join ``prefix`` (trusted, may contain dots) and the encoded ``tokens``."""
    if not tokens:
        raise InvalidSubject("a subject needs at least one token")
    return ".".join((prefix, *(encode_token(t) for t in tokens)))


def decode_subject(prefix: str, subject: str) -> tuple[str, ...]:
    """Split a wire subject under ``prefix`` back into its decoded tokens."""
    rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else subject
    return tuple(decode_token(t) for t in rest.split("."))
