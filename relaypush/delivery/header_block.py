"""HPACK (RFC 7541) for the providers' HTTP/2 client: header blocks of requests and answers.

The one module that uses hpack's internals (its static table and its Huffman decoder);
``pyproject.toml`` bounds hpack and ``tests/unit/test_http2_client.py`` checks what we use.

Encoding (:func:`encode`): every field is a literal without indexing (``authorization`` never
indexed) and without Huffman coding, its name taken from the static table where it is there;
fields that are whole static-table entries (``:method: POST``, ``:scheme: https``) are indexed.
Nothing enters the server's dynamic table, so an encoded field does not depend on the
connection and is cached by value.

Decoding (:func:`decode`): the client announces ``SETTINGS_HEADER_TABLE_SIZE`` 0, so a server
can only refer to the static table; a field it adds with incremental indexing is evicted at
once. A reference into the dynamic table, or a table size above 0, is a
:class:`CompressionError`. Values stay as they came and are Huffman-decoded only when read
(:meth:`Fields.get`): the ``apns-id`` of every APNs answer, unique each time, costs nothing
when nobody reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

__all__ = ["STATIC_TABLE", "CompressionError", "Fields", "decode", "encode"]

#: RFC 7541 Appendix A, indexed from 1.
STATIC_TABLE: Final[tuple[tuple[bytes, bytes], ...]] = tuple(HeaderTable.STATIC_TABLE)

_STATIC_NAMES: Final = {name: i for i, (name, _) in reversed(list(enumerate(STATIC_TABLE, 1)))}
_STATIC_PAIRS: Final = {pair: i for i, pair in enumerate(STATIC_TABLE, 1) if pair[1]}
_NEVER_INDEXED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
_CACHE_SIZE: Final = 1024  # fields (and names) remembered; a request's constant ones stay


class CompressionError(Exception):
    """A header block this decoder cannot or must not decode (HTTP/2 COMPRESSION_ERROR)."""


# -- encoding ----------------------------------------------------------------------------------


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer in a first byte of ``prefix_bits`` bits under the high bits ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _field(name: bytes, value: bytes) -> bytes:
    """One field's representation: it depends on nothing else, so it is cached by value."""
    index = _STATIC_PAIRS.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    first = 0x10 if name in _NEVER_INDEXED else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        head = _integer(name_index, 4, first)
    else:
        head = bytes((first,)) + _integer(len(name), 7, 0) + name
    return head + _integer(len(value), 7, 0) + value


def encode(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The header block of ``headers`` (lower-case names, pseudo-headers first)."""
    return b"".join([_field(name, value) for name, value in headers])


# -- decoding ----------------------------------------------------------------------------------


class Fields:
    """The fields of one header block, by lower-case name (the last of repeated names)."""

    __slots__ = ("_raw",)

    def __init__(self, raw: dict[bytes, tuple[bytes, bool]]) -> None:
        self._raw = raw

    def get(self, name: bytes) -> bytes | None:
        """The value of ``name``, Huffman-decoded now if it came coded; None when absent."""
        found = self._raw.get(name)
        if found is None:
            return None
        value, huffman = found
        return _huffman(value) if huffman else value

    @property
    def status(self) -> int:
        """``:status`` as a number (0 when missing or malformed)."""
        value = self.get(b":status")
        return int(value) if value is not None and value.isdigit() else 0

    def names(self) -> list[bytes]:
        return list(self._raw)


def _huffman(data: bytes) -> bytes:
    try:
        return decode_huffman(data)
    except HPACKDecodingError as exc:
        raise CompressionError(f"bad Huffman string: {exc}") from exc


def _read_integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise CompressionError("truncated or oversized integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _read_string(data: bytes, pos: int) -> tuple[bytes, bool, int]:
    huffman = bool(data[pos] & 0x80)
    length, pos = _read_integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise CompressionError("truncated string")
    return data[pos:end], huffman, end


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _huffman_name(raw: bytes) -> bytes:
    return _huffman(raw)


def _read_name(data: bytes, pos: int, index: int) -> tuple[bytes, int]:
    if index:
        if index > len(STATIC_TABLE):
            raise CompressionError(f"index {index} is in the dynamic table, which is empty")
        return STATIC_TABLE[index - 1][0], pos
    raw, huffman, pos = _read_string(data, pos)
    return (_huffman_name(raw) if huffman else raw), pos


def decode(block: bytes) -> Fields:
    """The fields of a server's header block; :class:`CompressionError` if it is not valid
    for a decoder whose dynamic table holds nothing."""
    raw: dict[bytes, tuple[bytes, bool]] = {}
    pos, end = 0, len(block)
    try:
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = _read_integer(block, pos, 7)
                if index == 0 or index > len(STATIC_TABLE):
                    raise CompressionError(f"index {index} is not in the static table")
                name, value = STATIC_TABLE[index - 1]
                raw[name] = (value, False)
                continue
            if byte & 0x40:  # literal with incremental indexing: evicted at once (size 0)
                index, pos = _read_integer(block, pos, 6)
            elif byte & 0x20:  # dynamic table size update
                size, pos = _read_integer(block, pos, 5)
                if size:
                    raise CompressionError(f"table size {size} above the 0 we announced")
                continue
            else:  # literal without indexing, or never indexed
                index, pos = _read_integer(block, pos, 4)
            name, pos = _read_name(block, pos, index)
            value, huffman, pos = _read_string(block, pos)
            raw[name] = (value, huffman)
    except IndexError as exc:
        raise CompressionError("truncated header block") from exc
    return Fields(raw)
