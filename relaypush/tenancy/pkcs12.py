"""How much key derivation opening a PKCS#12 file (or an encrypted PEM key) would cost.

Opening a ``.p12`` runs a password-based key derivation for its MAC and for each encrypted part,
each as many times as the file itself asks (``iterations``): a file asking for two billion makes
OpenSSL work for hours, and ``cryptography`` holds the GIL meanwhile, so a worker thread does not
keep the server answering. :func:`kdf_costs` reads those counts from the structure (BER, as
PKCS#12 allows) without deriving anything, so that a checker can refuse the file before the
expensive work. It finds the MAC's count and every password-based algorithm identifier in the
clear parts: PKCS#12 PBE and PBES1 (salt, iterations), PBKDF2 (inside PBES2 and PBMAC1) and
scrypt (N * r * p). Parts nested inside an encrypted part cannot be read without decrypting it;
their cost is bounded only by the checker's timeout.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["kdf_costs", "pem_blocks"]

_SEQUENCE: Final = 0x30
_INTEGER: Final = 0x02
_OCTET_STRING: Final = 0x04
_CONSTRUCTED_OCTET_STRING: Final = 0x24
_OID: Final = 0x06
_MAX_DEPTH: Final = 32
_MAX_NODES: Final = 50_000


def _oid(dotted: str) -> bytes:
    """The DER contents of an OBJECT IDENTIFIER."""
    first, second, *rest = (int(part) for part in dotted.split("."))
    out = bytearray([first * 40 + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


#: Algorithms whose parameters are SEQUENCE { salt, iterations }.
_SALT_THEN_COUNT: Final = frozenset(
    _oid(o)
    for o in (
        *(f"1.2.840.113549.1.12.1.{n}" for n in range(1, 7)),  # PKCS#12 PBE
        *(f"1.2.840.113549.1.5.{n}" for n in (1, 3, 4, 6, 10, 11)),  # PBES1
        "1.2.840.113549.1.5.12",  # PBKDF2 (salt, iterationCount, ...)
    )
)
_SCRYPT: Final = _oid("1.3.6.1.4.1.11591.4.11")


@dataclass(frozen=True, slots=True)
class _Node:
    tag: int
    value: bytes
    children: tuple[_Node, ...]


class _Reader:
    """A BER reader for what PKCS#12 files hold (low tag numbers, definite and indefinite
    lengths, constructed OCTET STRINGs); ``ValueError`` for anything else."""

    def __init__(self) -> None:
        self.nodes = 0

    def element(self, data: bytes, pos: int, depth: int) -> tuple[_Node, int]:
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise ValueError("too many elements")
        if pos + 2 > len(data):
            raise ValueError("truncated")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise ValueError("high tag numbers are not used by PKCS#12")
        constructed = bool(tag & 0x20)
        first = data[pos + 1]
        pos += 2
        if first == 0x80:
            if not constructed:
                raise ValueError("indefinite length on a primitive element")
            children: list[_Node] = []
            while True:
                if data[pos : pos + 2] == b"\x00\x00":
                    return self._node(tag, children), pos + 2
                child, pos = self.element(data, pos, depth + 1)
                children.append(child)
        if first & 0x80:
            size = first & 0x7F
            if size > 4 or pos + size > len(data):
                raise ValueError("bad length")
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            length = first
        end = pos + length
        if end > len(data):
            raise ValueError("truncated")
        if not constructed:
            return _Node(tag, data[pos:end], ()), end
        children = []
        while pos < end:
            child, pos = self.element(data, pos, depth + 1)
            children.append(child)
        if pos != end:
            raise ValueError("an element overruns its parent")
        return self._node(tag, children), end

    @staticmethod
    def _node(tag: int, children: list[_Node]) -> _Node:
        if tag == _CONSTRUCTED_OCTET_STRING:  # BER: an OCTET STRING in pieces
            return _Node(_OCTET_STRING, b"".join(c.value for c in children), ())
        return _Node(tag, b"", tuple(children))

    def whole(self, data: bytes, depth: int = 0) -> _Node:
        node, end = self.element(data, 0, depth)
        if end != len(data):
            raise ValueError("trailing bytes")
        return node


def _integer(node: _Node) -> int:
    if node.tag != _INTEGER or not node.value:
        raise ValueError("expected an INTEGER")
    value = int.from_bytes(node.value, "big", signed=True)
    if value < 1:
        raise ValueError("an iteration count must be positive")
    return value


def _algorithm_cost(node: _Node) -> int | None:
    """The cost of a password-based AlgorithmIdentifier, None for any other SEQUENCE."""
    if node.tag != _SEQUENCE or len(node.children) < 2:
        return None
    oid, params = node.children[0], node.children[1]
    if oid.tag != _OID:
        return None
    if oid.value in _SALT_THEN_COUNT:
        if params.tag != _SEQUENCE or len(params.children) < 2:
            raise ValueError("malformed password-based algorithm parameters")
        return _integer(params.children[1])
    if oid.value == _SCRYPT:
        if params.tag != _SEQUENCE or len(params.children) < 4:
            raise ValueError("malformed scrypt parameters")
        n, r, p = (_integer(c) for c in params.children[1:4])
        return n * r * p
    return None


def _walk(node: _Node, reader: _Reader, depth: int, costs: list[int]) -> None:
    cost = _algorithm_cost(node)
    if cost is not None:
        costs.append(cost)
    if node.tag == _OCTET_STRING and node.value[:1] == b"\x30":
        # contents that are themselves BER (AuthenticatedSafe, SafeContents, bag values);
        # encrypted contents fail to parse and are skipped
        try:
            inner = reader.whole(node.value, depth + 1)
        except (ValueError, IndexError):
            return
        _walk(inner, reader, depth + 1, costs)
        return
    for child in node.children:
        _walk(child, reader, depth + 1, costs)


def kdf_costs(data: bytes) -> list[int]:
    """Every key-derivation count visible in a PKCS#12 file or a DER key: the MAC's and each
    password-based algorithm's. ``ValueError`` when ``data`` is not BER at all."""
    reader = _Reader()
    try:
        root = reader.whole(data)
    except IndexError as exc:
        raise ValueError("truncated") from exc
    costs: list[int] = []
    _walk(root, reader, 0, costs)
    if root.tag == _SEQUENCE and len(root.children) == 3:  # PFX { version, authSafe, macData }
        mac = root.children[2]
        if mac.tag == _SEQUENCE and len(mac.children) >= 3:
            costs.append(_integer(mac.children[2]))
    return costs


_PEM: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def pem_blocks(data: bytes) -> list[bytes]:
    """The DER of each PEM block in ``data`` (headers, as legacy encrypted keys have, skipped);
    ``ValueError`` for a block that is not base64."""
    blocks: list[bytes] = []
    for match in _PEM.finditer(data):
        lines = [line for line in match.group(2).splitlines() if b":" not in line]
        try:
            blocks.append(base64.b64decode(b"".join(lines).strip(), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a PEM block is not base64") from exc
    return blocks
