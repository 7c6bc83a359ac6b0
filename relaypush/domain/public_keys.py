"""Whether 32 bytes are an Ed25519 public key worth trusting.

``cryptography`` loads any 32 bytes as an Ed25519 public key. Some of them are not keys anyone
holds the private half of: an encoding of ``y`` at or above the field prime, a ``y`` with no
point on the curve, and the points of small order (the all-zero key and the neutral element among
them), under which forged signatures can verify. A configured relay key is checked here once, at
start, so that such a key is a configuration error instead of a door.

The arithmetic is RFC 8032's (section 5.1.3, decoding), in affine coordinates: it runs once per
process, so clarity wins over speed.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ed25519_key_problem", "relay_key_problem"]

_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1: Final = pow(2, (_P - 1) // 4, _P)

Point = tuple[int, int]
_NEUTRAL: Final[Point] = (0, 1)


def _inverse(n: int) -> int:
    return pow(n, _P - 2, _P)


def _add(a: Point, b: Point) -> Point:
    """Edwards addition on -x^2 + y^2 = 1 + d x^2 y^2 (complete: no exceptional cases)."""
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * _inverse(1 + t) % _P
    y3 = (y1 * y2 + x1 * x2) * _inverse(1 - t) % _P
    return x3, y3


def _decode(raw: bytes) -> Point | str:
    """The point ``raw`` encodes, or why it encodes none."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return "its y coordinate is not reduced below the field prime (a non-canonical encoding)"
    x2 = (y * y - 1) * _inverse(_D * y * y + 1) % _P
    if x2 == 0:
        if sign:
            return "it encodes x = 0 with the sign bit set (a non-canonical encoding)"
        return 0, y
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return "it is not a point on the curve"
    if x & 1 != sign:
        x = _P - x
    return x, y


def ed25519_key_problem(raw: bytes) -> str | None:
    """None when ``raw`` is a usable Ed25519 public key, else what is wrong with it."""
    if len(raw) != 32:
        return f"an Ed25519 public key is 32 bytes, got {len(raw)}"
    point = _decode(raw)
    if isinstance(point, str):
        return point
    eight_times = point
    for _ in range(3):
        eight_times = _add(eight_times, eight_times)
    if eight_times == _NEUTRAL:
        return "it is a point of small order (such as all zeros or the neutral element): weak"
    return None


def relay_key_problem(public_key_hex: str) -> str | None:
    """None when ``public_key_hex`` is a usable Ed25519 public key in hex, else what is wrong:
    not hex, not 32 bytes, not a point, or a weak (small-order) point such as all zeros."""
    try:
        raw = bytes.fromhex(public_key_hex.strip())
    except ValueError:
        return "the relay public key must be hexadecimal"
    problem = ed25519_key_problem(raw)
    return None if problem is None else f"the relay public key is unusable: {problem}"
