"""A per-IP rate limit for the register, unregister, tenant and admin routes (never the push
route).

A token bucket per client address: ``per_minute`` requests in a burst, refilled at
``per_minute / 60`` a second. The address is the connection's peer, unless that peer is one of
the trusted proxies: then ``X-Forwarded-For`` (every such header, in order, as one list) is read
from the right, skipping trusted proxies, and the first address that is not one of them is the
client; when every hop is trusted, the left-most is. An entry that is not an IP address where
the client should be is a 400 naming the header, as is a value that is not printable ASCII.
IPv6 clients are counted by their /64 (one subscriber's prefix: an address per request within
it gains nothing); IPv4 clients, and IPv4 addresses mapped into IPv6, by their address. Buckets
that refilled completely are forgotten when the table grows, so memory stays bounded by the
recently active addresses.

uvicorn's own reading of ``X-Forwarded-For`` is off (``proxy_headers=False`` where
:mod:`relaypush.runtime` starts it), so the peer seen here is always the real one and
``RELAYPUSH_TRUSTED_PROXIES`` alone decides whom to believe.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from relaypush.domain.errors import FieldError, InvalidRequest
from relaypush.http.headers import printable_ascii

__all__ = ["RateLimited", "RateLimiter"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_FOR: Final = "X-Forwarded-For"
#: IPv6 clients are counted per prefix of this length.
IPV6_PREFIX: Final = 64

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
        """The address (an IPv6 client's /64) a request is counted against.

        ``forwarded_for`` is the ``X-Forwarded-For`` list (several headers joined by commas);
        it is read only when ``peer`` is a trusted proxy. ``InvalidRequest`` naming the header
        when the entry taken for the client is not an IP address.
        """
        if peer is None:
            return "unknown"
        peer_ip = _address(peer)
        if peer_ip is None:  # not an IP (a unix socket, a test client): counted as it is
            return peer
        if not forwarded_for or not self._is_trusted(peer_ip):
            return _bucket_key(peer_ip)
        if not printable_ascii(forwarded_for):
            raise _bad_forwarded_for("must be printable ASCII")
        hops = [h.strip() for h in forwarded_for.split(",")]
        hops = [h for h in hops if h]
        if not hops:
            return _bucket_key(peer_ip)
        for hop in reversed(hops):
            ip = _address(hop)
            if ip is None:
                shown = hop if len(hop) <= 60 else hop[:60] + "..."
                raise _bad_forwarded_for(f"entry {shown!r} is not an IP address")
            if not self._is_trusted(ip):
                return _bucket_key(ip)
        first = _address(hops[0])
        assert first is not None
        return _bucket_key(first)

    def _is_trusted(self, ip: IPAddress) -> bool:
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
        forwarded = connection.headers.getall("x-forwarded-for", [])
        self.hit(self.client_address(peer, ", ".join(forwarded) if forwarded else None))


def _bad_forwarded_for(why: str) -> InvalidRequest:
    return InvalidRequest(fields=(FieldError(FORWARDED_FOR, why, "header"),))


def _address(text: str) -> IPAddress | None:
    """``text`` as an IP address (``[v6]``, ``[v6]:port`` and ``v4:port`` forms too), else None.
    An IPv4 address mapped into IPv6 is the IPv4 address."""
    host = text.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _bucket_key(ip: IPAddress) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)
