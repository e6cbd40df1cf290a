"""Destination policy: which addresses a request may go to, and the resolver that pins them.

With FETCHER_ALLOW_PRIVATE off, a request never reaches an address that is not public:
loopback, private, link-local (cloud metadata), multicast, reserved, unspecified, shared
(100.64/10), documentation and benchmark ranges, and the IPv6 forms that carry one of them
(IPv4-mapped and -compatible, 6to4, NAT64, Teredo). A name is resolved once, every address it
gives is checked, and the connection is made to those checked addresses only (`Guard.pinned`),
so a DNS answer cannot change between the check and the connect.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable

from fetcher.errors import BlockedDestination

__all__ = ["Guard", "address_verdict", "blocked_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ALSO_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation too (RFC 9637; Python 3.11 does not know it)
    )
)
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_COMPAT = ipaddress.IPv6Network("::/96")
_DNS_TTL_S = 30.0


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public destination, or None when it is."""
    for embedded in _embedded_ipv4(address):
        reason = blocked_reason(embedded)
        if reason is not None:
            return f"{reason} (embedded in {address})"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("special-purpose", any(address in net for net in _ALSO_BLOCKED)),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("not globally routable", not address.is_global),
    )
    for name, hit in checks:
        if hit:
            return f"{address} is {name}"
    return None


@functools.lru_cache(maxsize=4096)
def address_verdict(text: str) -> str | None:
    """`blocked_reason` of an address written as text, remembered: an address's verdict never
    changes, and the peer of every request is checked."""
    return blocked_reason(ipaddress.ip_address(text))


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if any(address in net for net in _NAT64) or (address in _COMPAT and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


Resolver = Callable[[str, int], Awaitable[list[str]]]


class Guard:
    """Resolves host names, refuses non-public destinations, and remembers what it checked.

    `resolve` and `treat_as_public` are for tests only; the daemon passes neither, and no
    setting reaches them. With them a test makes one loopback address stand for a public host
    and a name answer differently from one lookup to the next, so that what happens after the
    first check (a redirect, a changed DNS answer, the peer actually reached) is tested over
    real sockets."""

    def __init__(
        self,
        *,
        allow_private: bool,
        clock: Callable[[], float] = time.monotonic,
        resolve: Resolver | None = None,
        treat_as_public: frozenset[str] = frozenset(),
    ) -> None:
        self.allow_private = allow_private
        self._clock = clock
        self._resolve = resolve or _resolve
        self._public = treat_as_public
        self._cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    def verdict(self, address: str) -> str | None:
        """Why a connection to `address` (as text) is refused, or None: the check of every
        peer a request reaches."""
        return None if address in self._public else address_verdict(address)

    async def check(self, host: str, port: int) -> list[str]:
        """The addresses `host` may be connected to on `port`; `BlockedDestination` if any is
        not public (a name with one private answer is refused whole: DNS rebinding)."""
        key = (host, port)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self._resolve(host, port)
        if not self.allow_private:
            for text in addresses:
                reason = self.verdict(text)
                if reason is not None:
                    raise BlockedDestination(f"blocked destination: {host} → {reason}")
        self._cache[key] = (now + _DNS_TTL_S, addresses)
        return addresses

    def pinned(self, host: str, port: int) -> list[str] | None:
        """The addresses `check` approved for (host, port), if it did and they are fresh."""
        cached = self._cache.get((host, port))
        return cached[1] if cached is not None and cached[0] > self._clock() else None


async def _resolve(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0]).partition("%")[0]
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise OSError(f"cannot resolve {host}: no addresses")
    return addresses
