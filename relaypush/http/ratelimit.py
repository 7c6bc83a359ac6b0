"""A per-IP rate limit for the register, unregister and tenant routes (never the push route).

A token bucket per client address: ``per_minute`` requests in a burst, refilled at
``per_minute / 60`` a second. The address is the connection's peer, unless that peer is one of
the trusted proxies: then ``X-Forwarded-For`` is read from the right, skipping trusted proxies,
and the first address that is not one of them is the client. Buckets that refilled completely
are forgotten when the table grows, so memory stays bounded by the recently active addresses.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

__all__ = ["RateLimited", "RateLimiter"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Above this many remembered addresses, full buckets are dropped.
MAX_TRACKED: Final = 100_000


class RateLimited(Exception):
    """Too many requests from one address: answered 429 with ``Retry-After``."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(f"over {limit} requests a minute; retry after {retry_after} s")


def _networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Trusted proxies as networks: single addresses or CIDR blocks; ``ValueError`` if bad."""
    networks: list[IPNetwork] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or network (CIDR)"
            ) from exc
    return tuple(networks)


class RateLimiter:
    """Counts requests per client address; ``guard`` is a litestar guard that enforces it."""

    def __init__(
        self,
        per_minute: int,
        *,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        """``per_minute`` 0 turns the limit off."""
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._trusted = _networks(trusted_proxies)
        self._clock = clock
        self._max_tracked = max_tracked
        # address -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address a request is counted against."""
        if peer is None:
            return "unknown"
        if not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._is_trusted(hop):
                return hop
        return hops[0] or peer

    def _is_trusted(self, address: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def hit(self, address: str) -> None:
        """Count one request from ``address``; raises ``RateLimited`` when it is over."""
        if self.per_minute <= 0:
            return
        now = self._clock()
        capacity = float(self.per_minute)
        tokens, then = self._buckets.get(address, (capacity, now))
        tokens = min(capacity, tokens + (now - then) * self._rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            raise RateLimited(self.per_minute, math.ceil((1.0 - tokens) / self._rate))
        if address not in self._buckets and len(self._buckets) >= self._max_tracked:
            self._forget_full(now)
        self._buckets[address] = (tokens - 1.0, now)

    def _forget_full(self, now: float) -> None:
        capacity = float(self.per_minute)
        self._buckets = {
            a: (t, then)
            for a, (t, then) in self._buckets.items()
            if t + (now - then) * self._rate < capacity
        }
        if len(self._buckets) >= self._max_tracked:
            self._buckets.clear()

    def guard(self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        """A litestar guard counting the request against its client's address."""
        if self.per_minute <= 0:
            return
        client = connection.scope.get("client")
        peer = client[0] if client else None
        self.hit(self.client_address(peer, connection.headers.get("x-forwarded-for")))
