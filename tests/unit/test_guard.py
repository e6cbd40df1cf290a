"""The destination policy: every address in a blocked range is refused in every form."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fetcher.errors import BlockedDestination
from fetcher.guard import Guard, address_verdict, blocked_reason
from fetcher.urls import parse_url

BLOCKED_V4 = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
]  # fmt: skip
BLOCKED_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8"]


def _in(network: str) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    net = ipaddress.ip_network(network)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


def _v6_forms(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    n = int(v4)
    return [
        ipaddress.IPv6Address(f"::ffff:{v4}"),  # IPv4-mapped
        ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),  # 6to4
        ipaddress.IPv6Address((0x64FF9B << 96) | n),  # NAT64
    ]


@given(st.one_of([_in(n) for n in BLOCKED_V4]))
def test_blocked_ipv4_is_refused_also_inside_ipv6(address: ipaddress.IPv4Address) -> None:
    """A blocked IPv4 address is refused as it is and in the IPv6 forms that carry it."""
    assert blocked_reason(address) is not None
    for form in _v6_forms(address):
        assert blocked_reason(form) is not None, form


@given(st.one_of([_in(n) for n in BLOCKED_V4]))
def test_the_remembered_verdict_of_a_peer_address_is_the_same_verdict(
    address: ipaddress.IPv4Address,
) -> None:
    """`address_verdict` (the per-request peer check, cached) agrees with `blocked_reason`,
    for the address as text and for its IPv4-mapped form, the first time and the next."""
    for form in (address, ipaddress.IPv6Address(f"::ffff:{address}")):
        for _ in range(2):
            assert address_verdict(str(form)) == blocked_reason(form) is not None
    assert address_verdict("93.184.215.14") is None


@given(st.one_of([_in(n) for n in BLOCKED_V6]))
def test_blocked_ipv6_is_refused(address: ipaddress.IPv6Address) -> None:
    """Loopback, unspecified, unique-local, link-local and multicast IPv6 are refused."""
    assert blocked_reason(address) is not None


@given(st.sampled_from(["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700::1111"]))
def test_public_addresses_are_allowed(text: str) -> None:
    """Public addresses pass."""
    assert blocked_reason(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize(
    "host",
    ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::ffff:127.0.0.1]", "[::1]",
     "169.254.169.254", "localhost", "[::ffff:7f00:1]", "0"],
)  # fmt: skip
async def test_loopback_in_any_textual_form_is_blocked(host: str) -> None:
    """Numeric hosts in any form, and names resolving to loopback, are blocked before connect."""
    target = parse_url(f"http://{host}/")
    with pytest.raises(BlockedDestination):
        await Guard(allow_private=False).check(target.host, target.port)


async def test_allow_private_lets_loopback_through() -> None:
    """FETCHER_ALLOW_PRIVATE=true turns the policy off (tests and the demo use loopback)."""
    assert await Guard(allow_private=True).check("127.0.0.1", 80) == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.0.0.1", "10.0.0.1 is private"),
        ("169.254.169.254", "169.254.169.254 is link-local"),
        ("224.0.0.1", "224.0.0.1 is multicast"),
        ("100.64.0.1", "100.64.0.1 is special-purpose"),
        ("192.88.99.1", "192.88.99.1 is special-purpose"),
        ("3fff::1", "3fff::1 is special-purpose"),
        ("fec0::1", "fec0::1 is site-local"),
        ("5f00::1", "5f00::1 is reserved"),
        ("::", ":: is unspecified"),
        ("::1", "::1 is loopback"),  # not 0.0.0.1 inside an IPv4-compatible address
        ("::2", "0.0.0.2 is private (embedded in ::2)"),
        ("2002:7f00:1::", "127.0.0.1 is loopback (embedded in 2002:7f00:1::)"),
        ("64:ff9b::a00:1", "10.0.0.1 is private (embedded in 64:ff9b::a00:1)"),
        ("64:ff9b:1::a00:1", "10.0.0.1 is private (embedded in 64:ff9b:1::a00:1)"),
        ("::ffff:10.0.0.1", "10.0.0.1 is private (embedded in ::ffff:a00:1)"),
        # Teredo: server 65.54.227.120 (public), client 192.0.2.45 (documentation)
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2",
         "192.0.2.45 is private (embedded in 2001:0:4136:e378:8000:63bf:3fff:fdd2)"),
        ("2002:808:808::", None),  # 6to4 of a public address
        ("64:ff9b::808:808", "64:ff9b::808:808 is reserved"),  # NAT64 to a public one
    ],
)  # fmt: skip
def test_each_refusal_names_the_address_and_its_range(text: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(text)) == reason


class Resolver:
    """Answers from a script and counts the lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


async def test_an_answer_is_kept_for_its_ttl_per_host_and_port() -> None:
    """A name is looked up once per 30 s per (host, port); `pinned` gives what was checked
    while it is fresh and nothing after; a refused answer is not kept."""
    now = [0.0]
    resolver = Resolver(["8.8.8.8"], ["1.1.1.1"], ["10.0.0.1"])
    guard = Guard(allow_private=False, clock=lambda: now[0], resolve=resolver)
    assert guard.pinned("a.example", 80) is None
    assert await guard.check("a.example", 80) == ["8.8.8.8"]
    now[0] = 29.9
    assert await guard.check("a.example", 80) == ["8.8.8.8"]
    assert guard.pinned("a.example", 80) == ["8.8.8.8"] and guard.pinned("a.example", 81) is None
    assert resolver.asked == [("a.example", 80)]
    now[0] = 30.0  # expired at 30 s exactly
    assert guard.pinned("a.example", 80) is None
    assert await guard.check("a.example", 80) == ["1.1.1.1"]
    assert resolver.asked[-1] == ("a.example", 80)
    with pytest.raises(BlockedDestination, match=r"a\.example → 10\.0\.0\.1 is private"):
        await guard.check("a.example", 443)
    assert resolver.asked[-1] == ("a.example", 443) and guard.pinned("a.example", 443) is None


async def test_one_private_answer_refuses_the_name_and_allow_private_checks_nothing() -> None:
    mixed = Resolver(["8.8.8.8", "127.0.0.1"])
    with pytest.raises(BlockedDestination, match=r"^blocked destination: h → 127\.0\.0\.1"):
        await Guard(allow_private=False, resolve=mixed).check("h", 80)
    assert await Guard(allow_private=True, resolve=mixed).check("h", 80) == ["8.8.8.8", "127.0.0.1"]


async def test_the_system_resolver_gives_each_address_once() -> None:
    """`localhost` from the hosts file (no DNS traffic): distinct addresses, no scope."""
    addresses = await Guard(allow_private=True).check("localhost", 80)
    assert "127.0.0.1" in addresses and len(addresses) == len(set(addresses))
    assert all("%" not in a for a in addresses)
    assert await Guard(allow_private=True).check("::1", 80) == ["::1"]
