"""Politeness against a real origin: rate windows, Retry-After, retries, redirects, SIGHUP."""

from __future__ import annotations

import signal
import time

import pytest

from fetcher.demo import Origin

from .conftest import Fetcher, assert_counters_match, events, wait_until

pytestmark = pytest.mark.integration


def test_rate_windows_hold_and_the_run_is_not_slower_than_the_rate(
    fetcher: Fetcher, origin: Origin
) -> None:
    """No one-second window gets more than rate + burst requests, and the run takes about as
    long as the rate demands (burst first, then one every 1/rate s)."""
    fetcher.set(host_rate=8, host_burst=2, host_concurrency=8)
    fetcher.submit([origin.url(f"ok/{n}") for n in range(40)])
    fetcher.drain()
    arrivals = sorted(origin.stats.arrivals[origin.host()])
    assert len(arrivals) == 40
    for i, t in enumerate(arrivals):
        assert sum(1 for u in arrivals[i:] if u <= t + 1.0) <= 8 + 2
    span = arrivals[-1] - arrivals[0]
    ideal = (40 - 2) / 8
    assert ideal - 0.05 <= span <= ideal * 1.15


def test_retry_after_pauses_the_whole_host(fetcher: Fetcher, origin: Origin) -> None:
    """After a 429 with Retry-After: 1, no request reaches that host for a second, whichever
    job it is for; other hosts go on meanwhile."""
    fetcher.set(host_concurrency=1)
    fetcher.submit([origin.url("limited/x")] + [origin.url(f"ok/{n}") for n in range(5)]
                   + [origin.url(f"ok/{n}", 1) for n in range(5)])  # fmt: skip
    fetcher.drain()
    first, *rest = sorted(origin.stats.arrivals[origin.host()])
    assert len(rest) == 6
    assert min(rest) - first >= 1.0
    other = origin.stats.arrivals[origin.host(1)]
    assert max(other) - first < 1.0  # the other host was not held up
    assert_counters_match(fetcher, origin)


def test_http_date_retry_after_is_honoured(fetcher: Fetcher, origin: Origin) -> None:
    """Retry-After as an HTTP date (503) pauses the host until that time."""
    fetcher.set(host_concurrency=1)
    fetcher.submit([origin.url("limited-date/x"), origin.url("ok/1")])
    fetcher.drain()
    first, *rest = sorted(origin.stats.arrivals[origin.host()])
    assert min(rest) - first >= 1.0  # the date has one-second resolution: 2 s asked, >1 s kept


def test_a_pause_outlives_a_restart(fetcher: Fetcher, origin: Origin) -> None:
    """A Retry-After pause is committed with the batch that brought it: a daemon stopped and
    started again during the pause still holds the host until it ends."""
    fetcher.set(host_concurrency=1)
    fetcher.submit([origin.url("pause/4/x")] + [origin.url(f"ok/{n}") for n in range(3)])
    daemon = fetcher.start()
    paused = wait_until(
        lambda: any(e["event"] == "host.paused" for e in fetcher.log_of()), timeout=10
    )
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0 and paused
    restarted = fetcher.drain()
    first, *rest = sorted(origin.stats.arrivals[origin.host()])
    assert len(rest) == 4  # three jobs and the paused one's retry, all after the pause
    assert min(rest) - first >= 3.9
    assert '"event":"hosts.pauses_restored"' in restarted.stderr
    assert_counters_match(fetcher, origin)


def test_backoff_exhaustion_makes_exactly_max_attempts_requests(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A 503 forever is tried FETCHER_MAX_ATTEMPTS times, then fails; a 404 is final at once."""
    fetcher.set(max_attempts=3)
    fetcher.submit([origin.url("status/503/a"), origin.url("status/404/b")])
    fetcher.drain()
    assert origin.stats.paths[(origin.host(), "/status/503/a")] == 3
    assert origin.stats.paths[(origin.host(), "/status/404/b")] == 1
    results = {r["url"].rsplit("/", 1)[1]: r for r in fetcher.results()}
    assert results["a"]["state"] == "failed" and results["a"]["attempts"] == 3
    assert results["a"]["error"] == "gave up after 3 attempts: HTTP 503"
    assert results["b"]["state"] == "done" and results["b"]["status"] == 404


def test_a_redirect_chain_across_two_hosts_is_counted_on_each(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Each hop is a request to its own host, counted there."""
    fetcher.submit([origin.url(f"to/{origin.host(1)}/{n}") for n in range(5)])
    fetcher.drain()
    stats = fetcher.stats()
    assert stats[origin.host(0)]["status_3xx"] == 5
    assert stats[origin.host(1)]["status_2xx"] == 5
    assert {r["final_url"] for r in fetcher.results()} == {
        origin.url(f"ok/{n}", 1) for n in range(5)
    }


def test_many_slow_hosts_fill_a_small_global_cap(fetcher: Fetcher, origin: Origin) -> None:
    """8 hosts at 4 requests/s each and a global cap of 2: the run takes about what the rates
    allow (no host's wait holds a slot another host could use)."""
    fetcher.set(host_rate=4, host_burst=1, max_concurrency=2)
    fetcher.submit([origin.url(f"ok/{n}", h) for h in range(8) for n in range(10)])
    started = time.monotonic()
    fetcher.drain()
    elapsed = time.monotonic() - started
    ideal = (10 - 1) / 4
    assert elapsed < ideal + 2.5  # process start-up and the drain poll included


def test_sighup_changes_a_hosts_rate_in_a_running_daemon(fetcher: Fetcher, origin: Origin) -> None:
    """A rewritten hosts file, then SIGHUP: the host speeds up without a restart."""
    hosts = fetcher.workdir / "hosts.toml"
    hosts.write_text(f'[hosts."{origin.host()}"]\nrate = 2\n')
    fetcher.set(hosts_file=hosts, host_rate=0)
    fetcher.submit([origin.url(f"ok/{n}") for n in range(60)])
    daemon = fetcher.start("--drain")
    assert wait_until(lambda: origin.stats.requests[origin.host()] >= 4, timeout=10)
    hosts.write_text(f'[hosts."{origin.host()}"]\nrate = 50\nburst = 5\n')
    daemon.send_signal(signal.SIGHUP)
    reloaded = time.monotonic()
    assert daemon.wait(20) == 0
    after = [t for t in origin.stats.arrivals[origin.host()] if t > reloaded + 0.3]
    assert len(after) >= 20
    assert (after[-1] - after[0]) / (len(after) - 1) < 0.1  # ~50/s, not 2/s
    assert any(e["event"] == "hosts.reloaded" for e in fetcher.log_of())


def test_a_bad_hosts_file_on_reload_keeps_the_old_limits(fetcher: Fetcher, origin: Origin) -> None:
    """A broken file on SIGHUP is logged and ignored; the daemon keeps fetching."""
    hosts = fetcher.workdir / "hosts.toml"
    hosts.write_text(f'[hosts."{origin.host()}"]\nrate = 20\n')
    fetcher.set(hosts_file=hosts)
    fetcher.submit([origin.url(f"ok/{n}") for n in range(30)])
    daemon = fetcher.start("--drain")
    assert wait_until(lambda: origin.stats.requests[origin.host()] >= 2, timeout=10)
    hosts.write_text("[hosts\n")
    daemon.send_signal(signal.SIGHUP)
    assert daemon.wait(20) == 0
    events = [e for e in fetcher.log_of() if e["event"] == "hosts.reload_failed"]
    assert events and "not valid TOML" in events[0]["why"]
    assert fetcher.status()["done"] == 30


def test_a_bare_429_pauses_the_whole_host_for_the_backoff_base(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A 429 without Retry-After pauses its host (FETCHER_BACKOFF_BASE, 0.6 s here, on the
    first strike): no request of any job reaches it meanwhile; the other host goes on."""
    fetcher.set(host_concurrency=1, backoff_base=0.6, backoff_max=2)
    fetcher.submit([origin.url("throttle/x")] + [origin.url(f"ok/{n}") for n in range(5)]
                   + [origin.url(f"ok/{n}", 1) for n in range(5)])  # fmt: skip
    result = fetcher.drain()
    first, *rest = sorted(origin.stats.arrivals[origin.host()])
    assert len(rest) == 6
    assert min(rest) - first >= 0.6
    assert max(origin.stats.arrivals[origin.host(1)]) - first < 0.6
    paused = [e for e in events(result.stderr) if e["event"] == "host.paused"]
    assert [(e["host"], e["why"], e["seconds"]) for e in paused] == [(origin.host(), "429", 0.6)]
    assert_counters_match(fetcher, origin)


def test_retry_after_is_honoured_up_to_retry_after_max(fetcher: Fetcher, origin: Origin) -> None:
    """A host asking for an hour (Retry-After: 3600) is paused FETCHER_RETRY_AFTER_MAX (1.5 s)
    instead: neither the hour nor nothing."""
    fetcher.set(host_concurrency=1, retry_after_max=1.5)
    fetcher.submit([origin.url("pause/3600/x"), origin.url("ok/1"), origin.url("ok/2")])
    result = fetcher.drain(timeout=60)
    first, *rest = sorted(origin.stats.arrivals[origin.host()])
    assert len(rest) == 3
    assert 1.5 <= min(rest) - first < 30
    paused = [e for e in events(result.stderr) if e["event"] == "host.paused"]
    assert [(e["why"], e["seconds"]) for e in paused] == [("Retry-After", 1.5)]
    assert fetcher.status()["done"] == 3
