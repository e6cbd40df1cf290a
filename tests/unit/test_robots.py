"""robots.txt verdicts and the gate, on injected clocks."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import respx

from fetcher.config import HostLimits, Settings
from fetcher.errors import BlockedDestination
from fetcher.fetch import Fetcher
from fetcher.limits import Limits
from fetcher.model import Job, Verdict
from fetcher.robots import (
    Gate,
    RobotsGate,
    SiteRules,
    decode,
    fetch_robots,
    group_of,
    origin_of,
    product_token,
)
from fetcher.scheduler import Scheduler
from fetcher.transport import HttpxTransport
from fetcher.urls import parse_url
from tests.unit.test_fetch import RespxTransport

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("agent", "token"),
    [("fetcher/1.0 (+https://x)", "fetcher"), ("MyBot", "MyBot"), ("a b/1", "a"),
     ("Foo_Bar-baz/2 (x)", "Foo_Bar-baz")],
)  # fmt: skip
def test_the_product_token_is_the_agent_s_first_word(agent: str, token: str) -> None:
    assert product_token(agent) == token


@pytest.mark.parametrize("agent", ["/1.0", " ", "bot2/1", "ツ/1", "*/1", "(x) fetcher/1"])
def test_a_user_agent_without_a_product_token_has_no_token(agent: str) -> None:
    """RFC 9309 2.2.1: a product token is letters, `_` and `-`; without one there is nothing
    to match robots.txt groups against (the setting is refused: exit 78)."""
    with pytest.raises(ValueError, match="product token"):
        product_token(agent)


def _allows(robots: str, token: str, url: str) -> bool:
    return SiteRules(Verdict("http://a", NOW, 200, robots), token).allows(url)


def test_a_byte_order_mark_is_dropped_whole_or_in_part() -> None:
    """A robots.txt saved with a UTF-8 BOM (or what is left of one, as the reference reads it)
    is read as its owner meant: the first line is `User-agent: *`, not `\ufeffUser-agent`."""
    for mark in (b"\xef\xbb\xbf", b"\xef\xbb", b"\xef"):
        text = decode(mark + b"User-agent: *\nDisallow: /\n")
        assert text == "User-agent: *\nDisallow: /\n"
        assert not _allows(text, "fetcher", "http://a/x")
    assert decode(b"User-agent: *\n\xef\xbb\xbfDisallow: /\x00\n") == (
        "User-agent: *\n\ufeffDisallow: / \n"  # a mark in the middle is a broken line
    )


def test_lines_the_parser_does_not_know_do_not_end_a_group() -> None:
    """RFC 9309 2.2.4: Sitemap, Crawl-delay and unknown lines between User-agent lines leave
    them one group: the second agent gets the rules (and the delay) too."""
    robots = (
        "User-agent: other\nSitemap: http://a/s.xml\nX-Unknown: 1\nCrawl-delay: 4\n"
        "User-agent: fetcher\nDisallow: /private/\n"
        "User-agent: *\nDisallow: /\n"
    )
    assert group_of(robots, "fetcher") == ["Crawl-delay: 4", "Disallow: /private/"]
    assert group_of(robots, "other") == ["Crawl-delay: 4", "Disallow: /private/"]
    assert not _allows(robots, "fetcher", "http://a/private/x")
    assert _allows(robots, "fetcher", "http://a/public")
    verdict = Verdict("http://a", NOW, 200, robots)
    assert SiteRules(verdict, "fetcher").delay_s() == 4


def test_an_agent_that_only_starts_like_the_token_is_another_agent() -> None:
    """The product token matches a whole agent name, regardless of case: `fetch` is not
    `fetcher`, so the `*` group applies; `FETCHER` is."""
    robots = "User-agent: fetch\nDisallow: /\n\nUser-agent: *\nAllow: /\n"
    assert _allows(robots, "fetcher", "http://a/x")
    assert not _allows(robots.replace("fetch\n", "FETCHER\n"), "fetcher", "http://a/x")
    assert not _allows(robots.replace("fetch\n", "fetcher/2.1\n"), "fetcher", "http://a/x")


def test_an_agent_name_with_a_space_is_its_first_word() -> None:
    """As the reference reads `User-agent: FOO BAR`: the agent `FOO`."""
    robots = "User-agent: *\nDisallow: /\nUser-agent: FETCHER Images\nAllow: /x/\nDisallow: /\n"
    assert _allows(robots, "fetcher", "http://a/x/y")
    assert not _allows(robots, "fetcher", "http://a/y")
    assert not _allows(robots, "images", "http://a/x/y")  # `*` for any other name


def test_groups_of_one_agent_combine_and_rules_outside_groups_count_for_none() -> None:
    robots = (
        "Disallow: /everyone\nUser-agent: fetcher\nDisallow: /a\nUser-agent: b\nDisallow: /b\n"
        "user agent: fetcher\ndisallow /c\n"
    )
    assert group_of(robots, "fetcher") == ["Disallow: /a", "Disallow: /c"]
    assert group_of(robots, "nobody") == []


@pytest.mark.parametrize(
    ("status", "usable", "allows"),
    [(200, True, False), (204, True, False), (301, True, True), (404, True, True),
     (410, True, True), (429, False, False), (500, False, False), (503, False, False),
     (None, False, False)],
)  # fmt: skip
def test_what_each_status_means(status: int | None, usable: bool, allows: bool) -> None:
    """2xx: the rules (here: disallow all); other 3xx and 4xx but 429: allow all; 429, 5xx
    and no answer: nothing until it is asked again."""
    verdict = Verdict("http://a", NOW, status, "User-agent: *\nDisallow: /\n" if status else "")
    assert verdict.usable is usable
    assert SiteRules(verdict, "fetcher").allows("http://a/x") is allows


def test_a_delay_under_a_second_and_a_rate_of_several_requests_count_too() -> None:
    assert (
        SiteRules(Verdict("http://a", NOW, 200, "User-agent: *\nCrawl-delay: 0.5\n"), "x").delay_s()
        == 0.5
    )
    rate = Verdict("http://a", NOW, 200, "User-agent: *\nRequest-rate: 2/10\n")
    assert SiteRules(rate, "x").delay_s() == 5


def test_only_the_hosts_that_obey_are_gated() -> None:
    clocks = Clocks()
    gate = RobotsGate(
        token="fetcher", ttl_s=60, backoff_base=1, backoff_max=4,
        obeyed=lambda key: key != "mine.example", clock=lambda: clocks.mono,
        wall=lambda: clocks.wall,
    )  # fmt: skip
    assert gate.check(parse_url("http://mine.example/x")) == (Gate.GO, 0.0)
    assert gate.check(parse_url("http://theirs.example/x"))[0] is Gate.FETCH


def test_a_usable_answer_starts_the_backoff_over() -> None:
    clocks = Clocks()
    gate = _gate(clocks)
    page = parse_url("http://a.example/x")
    origin = origin_of(page)
    for _ in range(2):
        gate.check(page)
        gate.settle(Verdict(origin, clocks.wall, 500))
        clocks.mono += 10
    gate.check(page)
    gate.settle(Verdict(origin, clocks.wall, 404))
    clocks.wall += 3600  # expired: asked again, and it fails again
    assert gate.check(page)[0] is Gate.FETCH
    gate.settle(Verdict(origin, clocks.wall, 500))
    assert gate.check(page) == (Gate.WAIT, clocks.mono + 1)  # the first step, not the third


def test_delay_is_the_larger_of_crawl_delay_and_request_rate() -> None:
    both = Verdict("http://a", NOW, 200, "User-agent: *\nCrawl-delay: 2\nRequest-rate: 1/5\n")
    assert SiteRules(both, "fetcher").delay_s() == 5
    assert (
        SiteRules(Verdict("http://a", NOW, 200, "User-agent: *\nCrawl-delay: 2\n"), "x").delay_s()
        == 2
    )
    assert (
        SiteRules(Verdict("http://a", NOW, 200, "User-agent: *\nAllow: /\n"), "x").delay_s() is None
    )
    assert SiteRules(Verdict("http://a", NOW, 404, ""), "x").delay_s() is None
    assert SiteRules(Verdict("http://a", NOW, 200, "Crawl-delay: 0\n"), "x").delay_s() is None
    assert Verdict("http://a", NOW, 200, "User-agent: *\nCrawl-delay: 2\n").size == 29


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = NOW


def _gate(clocks: Clocks, obeyed: bool = True) -> RobotsGate:
    return RobotsGate(
        token="fetcher", ttl_s=60, backoff_base=1, backoff_max=4, obeyed=lambda key: obeyed,
        clock=lambda: clocks.mono, wall=lambda: clocks.wall,
    )  # fmt: skip


def test_the_gate_fetches_once_then_waits_then_goes_by_the_rules() -> None:
    clocks = Clocks()
    gate = _gate(clocks)
    page, secret = parse_url("http://a.example/page"), parse_url("http://a.example/secret")
    origin = origin_of(page)
    assert origin == "http://a.example" and gate.unknown([origin]) == [origin]
    assert gate.check(page) == (Gate.FETCH, 0.0)
    assert gate.check(secret) == (Gate.WAIT, math.inf)  # one fetch at a time
    gate.settle(Verdict(origin, clocks.wall, 200, "User-agent: *\nDisallow: /secret\n"))
    assert gate.check(page) == (Gate.GO, 0.0) and gate.check(secret) == (Gate.REFUSE, 0.0)
    assert gate.unknown([origin]) == []
    assert gate.check(parse_url("https://a.example/page"))[0] is Gate.FETCH  # its own origin
    clocks.wall += 60  # the TTL has passed: asked again
    assert gate.check(page) == (Gate.FETCH, 0.0)


def test_an_unusable_answer_is_asked_again_on_the_backoff_schedule() -> None:
    clocks = Clocks()
    gate = _gate(clocks)
    page = parse_url("http://a.example/page")
    for wait in (1, 2, 4, 4):  # base 1, doubling, at most 4
        assert gate.check(page)[0] is Gate.FETCH
        gate.settle(Verdict(origin_of(page), clocks.wall, 503))
        assert gate.check(page) == (Gate.WAIT, clocks.mono + wait)
        clocks.mono += wait
    assert gate.check(page)[0] is Gate.FETCH
    gate.settle(Verdict(origin_of(page), clocks.wall, 404))
    assert gate.check(page)[0] is Gate.GO


def test_cached_verdicts_load_and_a_cancelled_fetch_is_asked_again() -> None:
    clocks = Clocks()
    gate = _gate(clocks)
    page = parse_url("http://a.example/x")
    gate.load(["http://a.example", "http://b.example"],
              [Verdict("http://a.example", clocks.wall - 10, 404)])  # fmt: skip
    assert gate.check(page)[0] is Gate.GO
    assert gate.check(parse_url("http://b.example/x"))[0] is Gate.FETCH
    gate.forget("http://b.example")
    assert gate.check(parse_url("http://b.example/x"))[0] is Gate.FETCH
    assert gate.verdict("http://a.example") is not None and gate.verdict("http://c") is None


def test_a_host_whose_rules_are_not_obeyed_always_goes() -> None:
    gate = _gate(Clocks(), obeyed=False)
    assert gate.check(parse_url("http://a.example/x")) == (Gate.GO, 0.0)


def test_idle_origins_are_forgotten_busy_and_fetching_ones_kept() -> None:
    clocks = Clocks()
    gate = _gate(clocks)
    gate.load(["http://idle", "http://busy"], [])
    assert gate.check(parse_url("http://fetching/x"))[0] is Gate.FETCH
    gate.forget_idle(lambda key: key == "busy")
    assert gate.unknown(["http://idle", "http://busy", "http://fetching"]) == ["http://idle"]


# -- the scheduler's gate -----------------------------------------------------------------


def _scheduled(clocks: Clocks, obeyed: bool = True) -> tuple[Scheduler, RobotsGate, list[Job]]:
    refused: list[Job] = []
    gate = _gate(clocks, obeyed)
    limits = Limits(4, HostLimits(rate=1, burst=3, concurrency=4), {}, lambda: clocks.mono)
    scheduler = Scheduler(limits, lambda: clocks.mono, robots=gate, refuse=refused.append)
    return scheduler, gate, refused


def _job(n: int, url: str) -> Job:
    target = parse_url(url)
    return Job(n, target.url, target.host_key, 0, target)


async def test_a_host_hands_out_its_robots_txt_first_then_its_pages_by_the_rules() -> None:
    """The first job of a host brings out the fetch of its robots.txt (a host place taken);
    its pages wait, holding no slot, until the verdict; then a disallowed page goes to
    `refuse` without a place, and the allowed ones go."""
    clocks = Clocks()
    scheduler, gate, refused = _scheduled(clocks)
    for n, path in enumerate(["a", "secret/1", "b"]):
        scheduler.add(_job(n + 1, f"http://h.example/{path}"))
    first = await scheduler.next_ready(0)
    assert first is not None
    robots, permit = first
    assert (robots.id, robots.url, robots.host, robots.attempts, robots.robots_for) == (
        0, "http://h.example/robots.txt", "h.example", 0, "http://h.example",
    )  # fmt: skip
    assert scheduler.pending == 3 and scheduler._limits.host("h.example").in_flight == 1
    assert await scheduler.next_ready(0) is None  # waiting for the verdict
    assert scheduler._limits.slots._value == 3  # the waiting pages hold no slot
    gate.settle(Verdict("http://h.example", clocks.wall, 200, "User-agent: *\nDisallow: /secret\n"))
    permit.release()
    got = []
    while (ready := await scheduler.next_ready(0)) is not None:
        got.append(ready[0].id)
        ready[1].release()
    assert got == [1, 3] and [job.id for job in refused] == [2]
    assert scheduler.pending == 0 and not scheduler.has_pending("h.example")
    assert scheduler._limits.host("h.example").in_flight == 0


async def test_a_host_whose_robots_txt_failed_waits_until_it_is_asked_again() -> None:
    clocks = Clocks()
    scheduler, gate, _ = _scheduled(clocks)
    scheduler.add(_job(1, "http://h.example/a"))
    first = await scheduler.next_ready(0)
    assert first is not None
    gate.settle(Verdict("http://h.example", clocks.wall, 503))
    first[1].release()
    assert await scheduler.next_ready(0) is None  # retry at +1 s
    clocks.mono += 1
    again = await scheduler.next_ready(0)
    assert again is not None and again[0].robots_for == "http://h.example"


async def test_a_refused_last_job_leaves_its_host_and_an_ignored_host_goes_at_once() -> None:
    clocks = Clocks()
    scheduler, gate, refused = _scheduled(clocks)
    gate.load(["http://h.example"], [Verdict("http://h.example", clocks.wall, 200,
                                             "User-agent: *\nDisallow: /\n")])  # fmt: skip
    scheduler.add(_job(1, "http://h.example/a"))
    assert await scheduler.next_ready(0) is None
    assert [job.id for job in refused] == [1] and not scheduler.has_pending("h.example")
    free, _, _ = _scheduled(clocks, obeyed=False)
    free.add(_job(2, "http://h.example/a"))
    ready = await free.next_ready(0)
    assert ready is not None and ready[0].id == 2


# -- the fetch of robots.txt, over respx --------------------------------------------------


def _fetcher(router: respx.Router, tmp_path: Path) -> Fetcher:
    settings = Settings(db=tmp_path / "f.db", allow_private=True)
    return Fetcher(settings, HttpxTransport(RespxTransport(router)), None)


async def test_fetch_robots_follows_redirects_and_keeps_500_kib(tmp_path: Path) -> None:
    router = respx.Router(assert_all_called=False)
    router.get("http://a.example/robots.txt").mock(
        return_value=httpx.Response(301, headers={"Location": "http://b.example/r.txt"})
    )
    router.get("http://b.example/r.txt").mock(
        return_value=httpx.Response(200, text="User-agent: *\nCrawl-delay: 3\n#" + "x" * 600_000)
    )
    verdict, hops = await fetch_robots(_fetcher(router, tmp_path), "http://a.example", "bot", NOW)
    assert [h.status for h in hops] == [301, 200]
    assert (verdict.origin, verdict.status, verdict.size) == ("http://a.example", 200, 500 * 1024)
    assert verdict.crawl_delay == 3 and verdict.fetched_at == NOW
    assert verdict.body.startswith("User-agent: *\nCrawl-delay: 3\n#xxx")


@pytest.mark.parametrize(
    ("answer", "status", "usable"),
    [(httpx.Response(404, text="User-agent: *\nDisallow: /\n"), 404, True),
     (httpx.Response(300, text="User-agent: *\nDisallow: /\n"), 300, True),
     (httpx.Response(503), 503, False), (httpx.ConnectError("refused"), None, False),
     (BlockedDestination("blocked destination: a.example → 10.0.0.1 is private"), 404, True),
     (httpx.Response(302, headers={"Location": "ftp://x/"}), 302, True),
     (httpx.Response(302), 302, True)],
)  # fmt: skip
async def test_fetch_robots_statuses(
    tmp_path: Path, answer: httpx.Response | Exception, status: int | None, usable: bool
) -> None:
    router = respx.Router(assert_all_called=False)
    route = router.get("http://a.example/robots.txt")
    if isinstance(answer, Exception):
        route.mock(side_effect=answer)
    else:
        route.mock(return_value=answer)
    verdict, hops = await fetch_robots(_fetcher(router, tmp_path), "http://a.example", "bot", NOW)
    assert (verdict.status, verdict.usable, verdict.body, len(hops)) == (status, usable, "", 1)
    assert (
        SiteRules(verdict, "bot").allows("http://a.example/x") is usable
    )  # no rules kept: all or none


async def test_a_robots_txt_that_is_not_utf8_is_read_with_replacements(tmp_path: Path) -> None:
    router = respx.Router(assert_all_called=False)
    router.get("http://a.example/robots.txt").mock(
        return_value=httpx.Response(200, content=b"User-agent: *\nDisallow: /\xff\n")
    )
    verdict, _ = await fetch_robots(_fetcher(router, tmp_path), "http://a.example", "bot", NOW)
    assert verdict.body == "User-agent: *\nDisallow: /\ufffd\n"


async def test_fetch_robots_stops_after_five_redirects(tmp_path: Path) -> None:
    router = respx.Router(assert_all_called=False)
    router.get(url__regex=r"http://a\.example/.*").mock(
        return_value=httpx.Response(302, headers={"Location": "/again"})
    )
    verdict, hops = await fetch_robots(_fetcher(router, tmp_path), "http://a.example", "bot", NOW)
    assert (
        len(hops) == 6
        and verdict.status == 302
        and SiteRules(verdict, "b").allows("http://a.example/x")
    )


async def test_a_robots_txt_with_a_byte_order_mark_is_read_through_the_daemon_s_path(
    tmp_path: Path,
) -> None:
    """fetch_robots → the gate, as the daemon reads it: a BOM-saved `Disallow: /` refuses."""
    router = respx.Router(assert_all_called=False)
    router.get("http://a.example/robots.txt").mock(
        return_value=httpx.Response(200, content=b"\xef\xbb\xbfUser-agent: *\nDisallow: /\n")
    )
    verdict, _ = await fetch_robots(_fetcher(router, tmp_path), "http://a.example", "bot", NOW)
    clocks = Clocks()
    gate = _gate(clocks)
    gate.load(["http://a.example"], [verdict])
    assert gate.check(parse_url("http://a.example/x")) == (Gate.REFUSE, 0.0)
