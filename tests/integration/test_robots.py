"""The site's own rules against the real daemon and the loopback origin: robots.txt (which
pages, when it is not there or not answering, redirects, huge files and bombs, Crawl-delay),
its cache across restarts, and conditional GET."""

from __future__ import annotations

import itertools
import json

import pytest

from fetcher.demo import Origin, RobotsFile
from fetcher.model import DISALLOWED

from .conftest import Fetcher, assert_counters_match, events, peak_rss_kb

pytestmark = pytest.mark.integration

RULES = """\
User-agent: *
Disallow: /

User-agent: fetcher
Disallow: /private/
Allow: /private/open/
Disallow: /*.pdf$
Disallow: /tmp*/cache
"""


def _obey(fetcher: Fetcher, **more: object) -> None:
    fetcher.set(robots="obey", user_agent="fetcher/1.0 (+https://example.org/bot)", **more)


def _fetched(origin: Origin, index: int = 0) -> list[str]:
    """Paths the origin served to host `index`, robots.txt aside, in order."""
    host = origin.host(index)
    return [p for _, h, p in origin.stats.sequence if h == host and p != "/robots.txt"]


def _robots_requests(origin: Origin, index: int = 0) -> int:
    return origin.stats.paths[(origin.host(index), "/robots.txt")]


def test_the_rules_of_fetcher_s_group_decide_page_by_page(fetcher: Fetcher, origin: Origin) -> None:
    """fetcher's own group, not `*` (which disallows all): a longer Allow beats a Disallow,
    `*` and `$` match as RFC 9309 says; a disallowed job fails with its reason and sends
    nothing, and each host counts the jobs its robots.txt refused."""
    _obey(fetcher)
    origin.robots[origin.host()] = RobotsFile(body=RULES)
    allowed = ["ok/1", "private/open/2", "doc.pdf/x", "tmpfoo/x", "a.pdfx"]
    refused = ["private/3", "b.pdf", "tmp/cache", "tmpfoo/cache/4"]
    fetcher.submit([origin.url(p) for p in allowed + refused])
    fetcher.drain()
    assert sorted(_fetched(origin)) == sorted(f"/{p}" for p in allowed)
    results = {r["url"].split("/", 3)[3]: r for r in fetcher.results()}
    for path in refused:
        assert (results[path]["state"], results[path]["error"]) == ("failed", DISALLOWED)
        assert results[path]["attempts"] == 0
    assert all(results[p]["state"] == "done" for p in allowed)
    assert _robots_requests(origin) == 1
    stats = fetcher.stats()[origin.host()]
    assert stats["robots_disallowed"] == len(refused)
    assert stats["requests"] == len(allowed) + 1  # the robots.txt request is the host's too
    assert_counters_match(fetcher, origin)


def test_no_robots_txt_allows_everything(fetcher: Fetcher, origin: Origin) -> None:
    """A 404 (the origin's default): every page is fetched, robots.txt asked once."""
    _obey(fetcher)
    fetcher.submit([origin.url(f"ok/{n}") for n in range(5)])
    fetcher.drain()
    assert len(_fetched(origin)) == 5 and _robots_requests(origin) == 1
    assert fetcher.status()["done"] == 5


@pytest.mark.parametrize("failures", [["500"], ["reset"], ["429", "500"]])
def test_a_robots_txt_that_fails_holds_the_host_until_it_answers(
    fetcher: Fetcher, origin: Origin, failures: list[str]
) -> None:
    """5xx, 429 or no response: nothing is fetched from the host, its jobs wait (they do not
    fail), robots.txt is asked again on the backoff schedule; once it answers, the pages
    go. Another host is not held meanwhile."""
    _obey(fetcher, backoff_base=0.3, backoff_max=1)
    tries = len(failures) + 1
    origin.robots[origin.host()] = RobotsFile(
        body="User-agent: *\nAllow: /\n", failures=[*failures]
    )
    fetcher.submit([origin.url(f"ok/{n}") for n in range(3)] + [origin.url("ok/other", 1)])
    fetcher.drain()
    sequence = [(h, p) for _, h, p in origin.stats.sequence if h == origin.host()]
    assert sequence[:tries] == [(origin.host(), "/robots.txt")] * tries
    assert sorted(p for _, p in sequence[tries:]) == ["/ok/0", "/ok/1", "/ok/2"], sequence
    assert fetcher.status()["done"] == 4
    other = origin.stats.arrivals[origin.host(1)]
    assert max(other) < origin.stats.arrivals[origin.host()][-1]  # not held up


def test_a_redirected_robots_txt_gives_the_rules_of_where_it_leads(
    fetcher: Fetcher, origin: Origin
) -> None:
    """robots.txt at host 0 redirects to host 1's file: its rules apply to host 0's pages."""
    _obey(fetcher)
    origin.robots[origin.host()] = RobotsFile(location=f"http://{origin.host(1)}/robots.txt")
    origin.robots[origin.host(1)] = RobotsFile(body="User-agent: *\nDisallow: /no/\n")
    fetcher.submit([origin.url("ok/1"), origin.url("no/2")])
    fetcher.drain()
    results = {r["url"].split("/", 3)[3]: r for r in fetcher.results()}
    assert results["ok/1"]["state"] == "done"
    assert (results["no/2"]["state"], results["no/2"]["error"]) == ("failed", DISALLOWED)
    assert _fetched(origin) == ["/ok/1"]
    assert _robots_requests(origin) == _robots_requests(origin, 1) == 1
    assert_counters_match(fetcher, origin)  # each request counted at the host it went to


@pytest.mark.parametrize("spec", [RobotsFile(large=5_000_000), RobotsFile(bomb_mb=200)])
def test_a_huge_or_bombed_robots_txt_is_read_to_500_kib_only(
    fetcher: Fetcher, origin: Origin, spec: RobotsFile
) -> None:
    """5 MB of comments, or 200 MB of zeros in 200 kB of gzip: the daemon reads the first
    500 KiB as the file, fetches the page, and its peak memory stays within 25 MB of a daemon
    that met no robots.txt at all (measured first, in the same run)."""
    _obey(fetcher)
    fetcher.submit([origin.url("ok/0", 1)])  # host 1: no robots.txt, the baseline daemon
    baseline = peak_rss_kb(fetcher.drain())
    origin.robots[origin.host()] = spec
    fetcher.submit([origin.url("ok/1")])
    result = fetcher.drain()
    assert fetcher.status()["done"] == 2 and _fetched(origin) == ["/ok/1"]
    robots = [e for e in events(result.stderr) if e["event"] == "robots.fetched"]
    assert [(e["status"], e["usable"]) for e in robots] == [(200, True)]
    assert robots[0]["size"] == 500 * 1024
    assert peak_rss_kb(result) < baseline + 25 * 1024, (baseline, peak_rss_kb(result))


def test_crawl_delay_slows_a_host_below_the_operator_s_rate(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Crawl-delay: 2 at a host the operator allows 10/s: its pages arrive at least 2 s
    apart (measured at the origin)."""
    _obey(fetcher, host_rate=10, host_burst=5)
    origin.robots[origin.host()] = RobotsFile(body="User-agent: *\nCrawl-delay: 2\n")
    fetcher.submit([origin.url(f"ok/{n}") for n in range(4)])
    fetcher.drain(timeout=60)
    arrivals = [t for t, h, p in origin.stats.sequence if h == origin.host() and p != "/robots.txt"]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 4 and min(gaps) >= 1.95, gaps
    shown = fetcher.cli("robots", origin.host(), "--json")
    assert [(r["origin"], r["crawl_delay"]) for r in json.loads(shown.stdout)] == [
        (f"http://{origin.host()}", 2.0)
    ]


def test_a_crawl_delay_past_the_cap_is_applied_at_the_cap_and_logged_once(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Crawl-delay: 3600 with FETCHER_CRAWL_DELAY_MAX=1: one page a second, the host is not
    skipped, and one `robots.crawl_delay_capped` warning says so."""
    _obey(fetcher, crawl_delay_max=1, host_rate=0)
    origin.robots[origin.host()] = RobotsFile(body="User-agent: *\nCrawl-delay: 3600\n")
    fetcher.submit([origin.url(f"ok/{n}") for n in range(3)])
    result = fetcher.drain(timeout=60)
    arrivals = [t for t, h, p in origin.stats.sequence if h == origin.host() and p != "/robots.txt"]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) == 3 and min(gaps) >= 0.95 and max(gaps) < 5, gaps
    capped = [e for e in events(result.stderr) if e["event"] == "robots.crawl_delay_capped"]
    assert [(e["asked_s"], e["applied_s"]) for e in capped] == [(3600, 1)]


def test_robots_txt_is_fetched_once_per_ttl_across_a_restart(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A second daemon run on the same database uses the cached verdict (and the disallowed
    page stays refused); with a TTL that has passed, the file is asked again."""
    _obey(fetcher)
    origin.robots[origin.host()] = RobotsFile(body="User-agent: *\nDisallow: /no\n")
    fetcher.submit([origin.url("ok/1"), origin.url("no/1")])
    fetcher.drain()
    fetcher.submit([origin.url("ok/2"), origin.url("no/2")])
    fetcher.drain()
    assert _robots_requests(origin) == 1
    assert _fetched(origin) == ["/ok/1", "/ok/2"]
    shown = fetcher.cli("robots", origin.url("no/3"), "--json")
    assert shown.returncode == 0, shown.stderr
    [row] = json.loads(shown.stdout)
    assert (row["status"], row["allowed"], row["rules"]) == (
        200,
        False,
        "User-agent: *\nDisallow: /no\n",
    )
    fetcher.set(robots_ttl=0.01)
    fetcher.submit([origin.url("ok/3")])
    fetcher.drain()
    assert _robots_requests(origin) == 2


def test_no_page_goes_before_its_robots_txt_and_a_slow_one_holds_only_its_host(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Host 0's robots.txt takes 2 s: none of its pages is requested before it answers, and
    host 1's pages are all done meanwhile through the other global slot (the waiting pages
    hold none)."""
    _obey(fetcher, max_concurrency=2)
    origin.robots[origin.host()] = RobotsFile(body="User-agent: *\nAllow: /\n", delay_s=2)
    fetcher.submit([origin.url(f"ok/{n}") for n in range(3)]
                   + [origin.url(f"ok/{n}", 1) for n in range(6)])  # fmt: skip
    fetcher.drain(timeout=60)
    first_0 = [t for t, h, _ in origin.stats.sequence if h == origin.host()]
    robots_at = first_0[0]
    pages_0 = [t for t, h, p in origin.stats.sequence if h == origin.host() and p != "/robots.txt"]
    pages_1 = [t for t, h, p in origin.stats.sequence if h == origin.host(1) and p != "/robots.txt"]
    assert min(pages_0) >= robots_at + 1.9  # after the answer
    assert len(pages_1) == 6 and max(pages_1) < robots_at + 1.9  # while host 0 waited


def test_the_hosts_file_can_turn_robots_off_for_one_host(fetcher: Fetcher, origin: Origin) -> None:
    """`robots = false` for the operator's own host: its robots.txt is not asked for."""
    hosts = fetcher.workdir / "hosts.toml"
    hosts.write_text(f'[hosts."{origin.host()}"]\nrobots = false\n')
    _obey(fetcher, hosts_file=hosts)
    origin.robots[origin.host()] = RobotsFile(body="User-agent: *\nDisallow: /\n")
    origin.robots[origin.host(1)] = RobotsFile(body="User-agent: *\nDisallow: /\n")
    fetcher.submit([origin.url("ok/1"), origin.url("ok/1", 1)])
    fetcher.drain()
    assert _robots_requests(origin) == 0 and _fetched(origin) == ["/ok/1"]
    assert _robots_requests(origin, 1) == 1 and _fetched(origin, 1) == []


@pytest.mark.parametrize("kind", ["etag", "lastmod"])
def test_a_page_fetched_again_is_asked_for_only_if_it_changed(
    fetcher: Fetcher, origin: Origin, kind: str
) -> None:
    """The second fetch of a URL carries its validator; the origin's 304 ends the job done,
    status 304, no bytes, and the result points at the body the first fetch kept."""
    url = origin.url(f"{kind}/page")
    fetcher.submit([url])
    fetcher.drain()
    fetcher.submit([url])
    fetcher.drain()
    first, second = sorted(fetcher.results(), key=lambda r: r["job_id"])
    assert (first["status"], first["bytes"]) == (200, 1024)
    assert (second["state"], second["status"], second["bytes"]) == ("done", 304, 0)
    assert (second["body_sha256"], second["body_path"]) == (
        first["body_sha256"],
        first["body_path"],
    )
    assert origin.stats.statuses[(origin.host(), 304)] == 1
    fetcher.set(conditional="false")
    fetcher.submit([url])
    fetcher.drain()
    assert origin.stats.statuses[(origin.host(), 200)] == 2  # asked without the validator


def test_a_redirect_hop_is_checked_against_its_own_host_s_rules(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Host 0 allows all and redirects to host 1, whose robots.txt disallows the target: the
    hop is not requested, the job fails with the reason, host 1 counts the refusal."""
    _obey(fetcher)
    origin.robots[origin.host(1)] = RobotsFile(body="User-agent: *\nDisallow: /ok/\n")
    fetcher.submit([origin.url(f"to/{origin.host(1)}/x")])
    fetcher.drain()
    [row] = fetcher.results()
    assert (row["state"], row["error"]) == ("failed", DISALLOWED)
    assert _fetched(origin, 1) == [] and _robots_requests(origin, 1) == 1
    assert fetcher.stats()[origin.host(1)]["robots_disallowed"] == 1


def test_a_robots_txt_saved_with_a_byte_order_mark_is_obeyed(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A robots.txt that starts with a UTF-8 BOM (as some editors save it) keeps the daemon
    out of what it disallows: the disallowed page is never requested."""
    _obey(fetcher)
    origin.robots[origin.host()] = RobotsFile(body="\ufeffUser-agent: *\nDisallow: /private/\n")
    fetcher.submit([origin.url("ok/1"), origin.url("private/2")])
    fetcher.drain()
    assert _fetched(origin) == ["/ok/1"]
    results = {r["url"].rsplit("/", 2)[1]: r for r in fetcher.results()}
    assert (results["private"]["state"], results["private"]["error"]) == ("failed", DISALLOWED)
