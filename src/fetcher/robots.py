"""The site's own rules: robots.txt (RFC 9309) per origin, and the gate no job passes before
its origin's verdict is known.

An origin is scheme://host-key. Its verdict comes from its robots.txt:
    2xx                    its rules: the group is chosen here, as RFC 9309 and Google's
                           reference parser choose it (`group_of`); Protego matches its rules
                           (wildcards, `$`, the longest match wins, Allow on a tie)
    4xx other than 429     no rules: everything allowed
    5xx, 429, no response  everything disallowed for now; asked again on the jobs' backoff
                           schedule (FETCHER_BACKOFF_BASE … _MAX), the origin's jobs wait
Crawl-delay and Request-rate slow the host: its interval is the larger of the operator's and
the site's, the site's capped at FETCHER_CRAWL_DELAY_MAX.

The gate answers, for the job at the front of a host's queue, one of: go, refuse (its URL is
disallowed), fetch robots.txt first (a job of its own, under the host's limits), or wait.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protego import Protego

from fetcher.config import product_token
from fetcher.errors import InvalidURL
from fetcher.model import REDIRECT_STATUSES, Hop, Verdict
from fetcher.policy import backoff_delay
from fetcher.urls import Target, join_redirect, parse_url

if TYPE_CHECKING:
    from fetcher.fetch import Fetcher

__all__ = [
    "MAX_ROBOTS_BYTES", "Gate", "RobotsGate", "SiteRules", "decode", "fetch_robots", "group_of",
    "host_of", "origin_of", "product_token", "robots_target",
]  # fmt: skip
_MAX_REDIRECTS = 5

MAX_ROBOTS_BYTES = 500 * 1024  # RFC 9309: parse at least 500 KiB; the rest is ignored

_LINES = re.compile(r"\r\n|\r|\n")  # RFC 9309 2.2: CR, LF or CRLF ends a line
_AGENT_NAME = re.compile(r"[A-Za-z_-]*")  # the part of a User-agent value that names an agent
_USER_AGENT = frozenset({"user-agent", "useragent", "user agent"})
_RULES = {  # the reference accepts these misspellings too
    "allow": "Allow",
    **dict.fromkeys(
        ("disallow", "dissallow", "dissalow", "disalow", "diasllow", "disallaw"), "Disallow"
    ),
}
_GROUP_MEMBERS = {"crawl-delay": "Crawl-delay", "request-rate": "Request-rate"}


def origin_of(target: Target) -> str:
    return f"{target.scheme}://{target.host_key}"


def decode(body: bytes) -> str:
    """robots.txt's text: UTF-8, a byte order mark (or what is left of one, as the reference
    reads it) dropped, a byte that is not UTF-8 replaced, NUL (nothing in robots.txt, and
    PostgreSQL's text cannot hold it) as a space."""
    for mark in (b"\xef\xbb\xbf", b"\xef\xbb", b"\xef"):
        if body.startswith(mark):
            body = body[len(mark) :]
            break
    return body.decode("utf-8", errors="replace").replace("\x00", " ")


def group_of(text: str, token: str) -> list[str]:
    """The lines of the group that applies to `token` (the rules of every group that names it,
    else of every `*` group), in order, as `Name: value`. As RFC 9309 2.2 and the reference:
    a group is one or more User-agent lines and the rules after them, ended by the next
    User-agent line after a rule; other lines (Sitemap, unknown ones, Crawl-delay) neither end
    nor start one; rules before any group are ignored; an agent is named by the first run of
    letters, `_` and `-` of its value (`FOO BAR` is `FOO`), matched whole and regardless of
    case; a missing colon is read as if it were there."""
    groups: list[tuple[set[str], list[str]]] = []
    agents: set[str] | None = None  # the current group's agents (None: before any group)
    after_rule = False
    for raw in _LINES.split(text.lstrip("\ufeff")):
        key, value = _key_value(raw)
        if key in _USER_AGENT:
            if agents is None or after_rule:
                agents, after_rule = set(), False
                groups.append((agents, []))
            starred = value == "*" or value[:2] in ("* ", "*\t")
            agents.add("*" if starred else _agent_name(value).lower())
            continue
        name = _RULES.get(key) or _GROUP_MEMBERS.get(key)
        if name is not None and agents is not None:  # else another line, or outside a group
            after_rule = after_rule or key in _RULES
            groups[-1][1].append(f"{name}: {value}")
    name = token.lower() if any(token.lower() in a for a, _ in groups) else "*"
    return [line for agents_, lines in groups if name in agents_ for line in lines]


def _agent_name(value: str) -> str:
    match = _AGENT_NAME.match(value)
    return match[0] if match else ""


def _key_value(line: str) -> tuple[str, str]:
    """A line's name (lower case) and value, its comment removed. Without a colon, the name
    ends at the first blank (the reference reads `disallow /` as `disallow: /`)."""
    line = line.split("#", 1)[0].strip()
    key, colon, value = line.partition(":")
    if not colon:
        key, _, value = line.partition(" ")
        if not value:
            key, _, value = line.partition("\t")
    return key.strip().lower(), value.strip()


class SiteRules:
    """The rules of a verdict's robots.txt for one product token, parsed once."""

    __slots__ = ("_parsed", "_token", "_usable")

    def __init__(self, verdict: Verdict, token: str) -> None:
        self._usable = verdict.usable
        self._token = token
        self._parsed = None
        if verdict.has_rules:  # Protego matches the rules of the group chosen for `token`
            group = group_of(verdict.body, token)
            self._parsed = Protego.parse("\n".join(["User-agent: *", *group]))

    def allows(self, url: str) -> bool:
        if not self._usable:
            return False
        return True if self._parsed is None else bool(self._parsed.can_fetch(url, self._token))

    def delay_s(self) -> float | None:
        """The interval the site asks for between requests (Crawl-delay, Request-rate)."""
        rules = self._parsed
        if rules is None:
            return None
        asked = [d for d in (rules.crawl_delay(self._token),) if d is not None and d > 0]
        rate = rules.request_rate(self._token)
        if rate is not None and rate.requests > 0:
            asked.append(rate.seconds / rate.requests)
        return max(asked) if asked else None


class Gate(enum.Enum):
    GO = "go"
    REFUSE = "refuse"
    FETCH = "fetch"
    WAIT = "wait"


@dataclass(slots=True)
class _Origin:
    verdict: Verdict | None = None
    rules: SiteRules | None = None  # the verdict's, parsed at the first check
    fetching: bool = False
    retry_at: float = 0.0  # monotonic: when an unusable verdict is asked again
    failures: int = 0


class RobotsGate:
    """Verdicts per origin, in memory; the daemon loads them from the database as it claims
    jobs (`known`, `load`) and stores each new one with its next batch."""

    def __init__(
        self,
        *,
        token: str,
        ttl_s: float,
        backoff_base: float,
        backoff_max: float,
        obeyed: Callable[[str], bool],
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.token = token
        self._ttl_s = ttl_s
        self._backoff = (backoff_base, backoff_max)
        self._obeyed = obeyed  # host key → whether its robots.txt is obeyed (hosts file)
        self._clock = clock
        self._wall = wall
        self._origins: dict[str, _Origin] = {}

    def unknown(self, origins: Iterable[str]) -> list[str]:
        """Of `origins`, those the gate has not met yet (the feeder loads them first)."""
        return [o for o in origins if o not in self._origins]

    def load(self, origins: Iterable[str], cached: Iterable[Verdict]) -> None:
        """What the database holds for `origins` (an origin without a row gets fetched)."""
        for origin in origins:
            self._origins.setdefault(origin, _Origin())
        for verdict in cached:
            self._origins[verdict.origin] = _Origin(verdict)

    def check(self, target: Target) -> tuple[Gate, float]:
        """What the job at `target` may do now; with WAIT, until when (monotonic, `inf`: until
        `settle` wakes the host)."""
        if not self._obeyed(target.host_key):
            return Gate.GO, 0.0
        origin = self._origins.setdefault(origin_of(target), _Origin())
        if origin.fetching:
            return Gate.WAIT, math.inf
        verdict = origin.verdict
        fresh = verdict is not None and self._wall() - verdict.fetched_at < self._ttl_s
        if verdict is None or not fresh or not verdict.usable:
            if verdict is not None and not verdict.usable and origin.retry_at > self._clock():
                return Gate.WAIT, origin.retry_at
            origin.fetching = True
            return Gate.FETCH, 0.0
        if origin.rules is None:
            origin.rules = SiteRules(verdict, self.token)
        if origin.rules.allows(target.url):
            return Gate.GO, 0.0
        return Gate.REFUSE, 0.0

    def settle(self, verdict: Verdict) -> None:
        """A fetch of the origin's robots.txt ended with `verdict`."""
        origin = self._origins.setdefault(verdict.origin, _Origin())
        origin.fetching = False
        origin.verdict, origin.rules = verdict, None
        if verdict.usable:
            origin.failures = 0
        else:
            origin.failures += 1
            base, most = self._backoff
            wait = backoff_delay(origin.failures, base_s=base, max_s=most, rand=lambda: 1.0)
            origin.retry_at = self._clock() + max(wait, 0.1)

    def forget(self, origin: str) -> None:
        """A fetch that never ended (cancelled at shutdown): the next job asks again."""
        state = self._origins.get(origin)
        if state is not None:
            state.fetching = False

    def forget_idle(self, busy: Callable[[str], bool]) -> None:
        """Drop what is kept of origins whose host (`busy(host key)`) holds no job: bounded
        memory over many hosts; the database still has their verdicts."""
        for origin in [
            o for o, state in self._origins.items()
            if not state.fetching and not busy(host_of(o))
        ]:  # fmt: skip
            del self._origins[origin]

    def verdict(self, origin: str) -> Verdict | None:
        state = self._origins.get(origin)
        return None if state is None else state.verdict


def host_of(origin: str) -> str:
    """The host key of an origin (`https://a.example:8443` → `a.example:8443`)."""
    return origin.partition("://")[2]


def robots_target(origin: str) -> Target:
    return parse_url(f"{origin}/robots.txt")


async def fetch_robots(
    fetcher: Fetcher, origin: str, token: str, now: float
) -> tuple[Verdict, list[Hop]]:
    """GET the origin's robots.txt, following up to 5 redirects (each through the SSRF guard
    like any request), reading `MAX_ROBOTS_BYTES` of it decoded at most; the rest of a bigger
    file is neither read nor used, as RFC 9309 allows. A redirect that cannot be followed (too
    many, to a refused address, to no URL) leaves the file unavailable, as a 4xx does. Returns
    the verdict and every request made, for the counters."""
    target = robots_target(origin)
    hops: list[Hop] = []
    body = bytearray()
    for _ in range(_MAX_REDIRECTS + 1):
        body.clear()
        hop = await fetcher.fetch(target, collect=body, max_bytes=MAX_ROBOTS_BYTES)
        hops.append(hop)
        if hop.status not in REDIRECT_STATUSES or not hop.location:
            break
        try:
            target = join_redirect(target.url, hop.location)
        except InvalidURL:
            break
    status = hop.status
    if hop.refused is not None and status is None:  # refused before any answer: unavailable
        status = 404
    ok = status is not None and 200 <= status < 300
    verdict = Verdict(origin, now, status, decode(bytes(body)) if ok else "")
    return dataclasses.replace(verdict, crawl_delay=SiteRules(verdict, token).delay_s()), hops
