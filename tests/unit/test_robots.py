"""robots.txt verdicts and the gate, on injected clocks."""

from __future__ import annotations

import math

import pytest

from fetcher.robots import Gate, RobotsGate, Verdict, origin_of, product_token
from fetcher.urls import parse_url

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("agent", "token"),
    [("fetcher/1.0 (+https://x)", "fetcher"), ("MyBot", "MyBot"), ("a b/1", "a"), (" ", "*")],
)
def test_the_product_token_is_the_agent_s_first_word(agent: str, token: str) -> None:
    assert product_token(agent) == token


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
    assert verdict.allows("http://a/x", "fetcher") is allows


def test_delay_is_the_larger_of_crawl_delay_and_request_rate() -> None:
    both = Verdict("http://a", NOW, 200, "User-agent: *\nCrawl-delay: 2\nRequest-rate: 1/5\n")
    assert both.delay_s("fetcher") == 5
    assert Verdict("http://a", NOW, 200, "User-agent: *\nCrawl-delay: 2\n").delay_s("x") == 2
    assert Verdict("http://a", NOW, 200, "User-agent: *\nAllow: /\n").delay_s("x") is None
    assert Verdict("http://a", NOW, 404, "").delay_s("x") is None
    assert Verdict("http://a", NOW, 200, "Crawl-delay: 0\n").delay_s("x") is None
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
    assert origin == "http://a.example" and gate.known([origin]) == [origin]
    assert gate.check(page) == (Gate.FETCH, 0.0)
    assert gate.check(secret) == (Gate.WAIT, math.inf)  # one fetch at a time
    gate.settle(Verdict(origin, clocks.wall, 200, "User-agent: *\nDisallow: /secret\n"))
    assert gate.check(page) == (Gate.GO, 0.0) and gate.check(secret) == (Gate.REFUSE, 0.0)
    assert gate.known([origin]) == []
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
    assert gate.known(["http://idle", "http://busy", "http://fetching"]) == ["http://idle"]
