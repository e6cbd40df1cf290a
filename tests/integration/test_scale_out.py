"""Several daemons on one PostgreSQL queue: per-host limits and counters hold across all of them,
measured at the origin, also when one is killed and when the server restarts under them."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from fetcher.demo import Origin
from tests import postgres

from .conftest import Fetcher, wait_until

pytestmark = pytest.mark.integration

HOSTS = [f"127.0.2.{i}" for i in range(1, 21)]  # twenty hosts of their own
RATE, BURST, CAP = 5, 3, 2
SLOW_MS = 500  # each request takes 0.5 s: at 5/s the cap of 2 in flight binds, not the rate
LIMITS = {
    "FETCHER_HOST_RATE": str(RATE),
    "FETCHER_HOST_BURST": str(BURST),
    "FETCHER_HOST_CONCURRENCY": str(CAP),
    "FETCHER_TIMEOUT": "2",
    "FETCHER_LEASE_S": "8",  # > 2 x 2 s + 2 s: a takeover after a kill comes within 8 s
    "FETCHER_MAX_CONCURRENCY": "16",
}


@pytest.fixture(scope="module")
def hosts_origin() -> Iterator[Origin]:
    with Origin(HOSTS) as origin:
        yield origin


class Cluster(Fetcher):
    """Daemons on one database (the `fetcher` helper, with the limits above), each a process of
    its own, stopped by pid at the end."""

    def __init__(self, workdir: Path, url: str) -> None:
        super().__init__(workdir, url)
        self.env.update(LIMITS)

    def start_drains(self, n: int) -> list[subprocess.Popen[bytes]]:
        return [self.start("--drain") for _ in range(n)]

    def wait(self, timeout: float) -> list[int | None]:
        """Every daemon's exit code once all have exited, or None for those still running
        after `timeout` seconds in all."""
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                break
        return [proc.poll() for proc in self._procs]


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, postgres_url)
    try:
        yield c
    finally:
        c.stop_all()


def _submit(cluster: Cluster, origin: Origin, per_host: int) -> int:
    urls = [
        origin.url(f"slow/{SLOW_MS}/{n}", i) for n in range(per_host) for i in range(len(HOSTS))
    ]
    assert cluster.submit(urls).returncode == 0
    return len(urls)


def _worst_window(arrivals: list[float]) -> int:
    """The most requests in any one-second window."""
    times = sorted(arrivals)
    worst, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        worst = max(worst, end - start + 1)
    return worst


def _assert_polite(origin: Origin) -> None:
    for host in (origin.host(i) for i in range(len(HOSTS))):
        arrivals = origin.stats.arrivals[host]
        assert _worst_window(arrivals) <= RATE + BURST, (host, _worst_window(arrivals))
        assert origin.stats.max_in_flight[host] <= CAP, (host, origin.stats.max_in_flight[host])


def _assert_counters_are_the_results(cluster: Cluster, total: int) -> list[dict[str, Any]]:
    """Every job ended done, once; each host's requests counter is its results' count."""
    results = cluster.results()
    assert len(results) == total and {r["state"] for r in results} == {"done"}
    assert len({r["job_id"] for r in results}) == total
    per_host = Counter(r["host"] for r in results)
    stats = cluster.stats()
    for host, n in per_host.items():
        assert stats[host]["requests"] == n == stats[host]["status_2xx"], (host, stats[host])
    return results


def test_three_daemons_share_the_hosts_and_hold_every_limit(
    cluster: Cluster, hosts_origin: Origin
) -> None:
    """Three daemons drain one queue of 20 rate-limited hosts: no host gets more than rate +
    burst in any second or more than its cap in flight, whichever daemons send; no URL is
    fetched twice; the counters are the origin's count; all three did part of the work."""
    origin = hosts_origin
    origin.reset_stats()
    total = _submit(cluster, origin, per_host=40)
    cluster.start_drains(3)
    assert cluster.wait(timeout=90) == [0, 0, 0], [cluster.log_of(i)[-3:] for i in range(3)]
    _assert_polite(origin)
    assert set(origin.stats.paths.values()) == {1}  # no URL fetched twice
    _assert_counters_are_the_results(cluster, total)
    for host in (origin.host(i) for i in range(len(HOSTS))):
        assert cluster.stats()[host]["requests"] == origin.stats.requests[host]
    done = [
        next(e for e in cluster.log_of(i) if e["event"] == "service.stopped")["done"]
        for i in range(3)
    ]
    assert sum(done) == total and min(done) > 0, done  # the hosts were shared


def _holder_of_most_hosts(cluster: Cluster) -> tuple[int, list[str]]:
    """The pid of the daemon holding the most hosts now, and those hosts."""

    async def query() -> list[Any]:
        conn = await asyncpg.connect(cluster.env["FETCHER_DB"])
        try:
            return list(
                await conn.fetch(
                    "SELECT d.pid, array_agg(h.host) AS hosts FROM hosts h"
                    " JOIN daemons d ON d.id = h.owner GROUP BY d.pid ORDER BY count(*) DESC"
                )
            )
        finally:
            await conn.close()

    rows = asyncio.run(query())
    return (int(rows[0]["pid"]), list(rows[0]["hosts"])) if rows else (0, [])


def test_a_killed_daemons_hosts_are_taken_over_without_a_burst(
    cluster: Cluster, hosts_origin: Origin
) -> None:
    """SIGKILL the daemon holding the most hosts mid-run: the others take its hosts and jobs
    over once its leases run out, never above a host's limits across the takeover; every
    job ends done once; the counters count exactly the committed results (the dead daemon's
    uncommitted requests were made, but nothing committed is fetched again)."""
    origin = hosts_origin
    origin.reset_stats()
    total = _submit(cluster, origin, per_host=30)
    procs = cluster.start_drains(3)
    assert wait_until(lambda: sum(origin.stats.requests.values()) >= 60, timeout=30)
    victim_pid, its_hosts = _holder_of_most_hosts(cluster)
    victim = next(p for p in procs if p.pid == victim_pid)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(10)
    others = [p for p in procs if p is not victim]
    started = time.monotonic()
    for proc in others:
        proc.wait(120)
    assert [p.returncode for p in others] == [0, 0]
    assert time.monotonic() - started < 110
    _assert_polite(origin)
    # each of its hosts idle at most one lease (8 s), plus a renewal's interval and a little
    resumed = [min(t for t in origin.stats.arrivals[h] if t > killed_at) for h in its_hosts]
    assert its_hosts and max(resumed) - killed_at < 8 + 2 + 1.5, (its_hosts, resumed, killed_at)
    results = _assert_counters_are_the_results(cluster, total)
    fetched = Counter(origin.stats.paths)
    refetched = sum(n - 1 for n in fetched.values())
    counted = sum(row["requests"] for row in cluster.stats().values())
    assert counted == len(results)
    assert sum(fetched.values()) - counted == refetched  # only uncommitted work was done again
    assert max(fetched.values()) <= 2


def test_a_postgres_restart_under_running_daemons_loses_nothing(
    tmp_path: Path, hosts_origin: Origin
) -> None:
    """The server restarts (every connection cut, down for 3 s) while three daemons work: they
    log it, wait, resume by themselves; every job ends done once, fetched once, limits hold,
    counters are the origin's count."""
    origin = hosts_origin
    origin.reset_stats()
    with postgres.throwaway() as (server, server_url), postgres.database(server_url) as url:
        cluster = Cluster(tmp_path, url)
        try:
            total = _submit(cluster, origin, per_host=30)
            cluster.start_drains(3)
            assert wait_until(lambda: sum(origin.stats.requests.values()) >= 60, timeout=30)
            server.restart(down_s=3)
            assert cluster.wait(timeout=120) == [0, 0, 0]
            _assert_polite(origin)
            _assert_counters_are_the_results(cluster, total)
            assert set(origin.stats.paths.values()) == {1}
            for i in range(3):
                names = [e["event"] for e in cluster.log_of(i)]
                assert "store.unavailable" in names and "store.recovered" in names, i
        finally:
            cluster.stop_all()


_HOLD_LOCK = """
import asyncio, sys, asyncpg
async def hold():
    conn = await asyncpg.connect(sys.argv[1])
    async with conn.transaction():
        await conn.execute("LOCK TABLE hosts IN ACCESS EXCLUSIVE MODE")
        print("locked", flush=True)
        await asyncio.sleep(float(sys.argv[2]))
    await conn.close()
asyncio.run(hold())
"""


def test_a_lock_held_past_the_busy_timeout_pauses_the_daemons_then_they_resume(
    cluster: Cluster, hosts_origin: Origin
) -> None:
    """Another client holds the hosts table locked for 4 s, past FETCHER_DB_BUSY_TIMEOUT (1 s):
    two daemons log the database unavailable, keep what they have, and go on by themselves
    once it is released; every job ends done once and the counters are the origin's count."""
    origin = hosts_origin
    origin.reset_stats()
    cluster.env["FETCHER_DB_BUSY_TIMEOUT"] = "1"
    total = _submit(cluster, origin, per_host=15)
    cluster.start_drains(2)
    assert wait_until(lambda: sum(origin.stats.requests.values()) >= 40, timeout=30)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, cluster.env["FETCHER_DB"], "4"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert holder.wait(30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    assert cluster.wait(timeout=90) == [0, 0]
    _assert_polite(origin)
    _assert_counters_are_the_results(cluster, total)
    assert set(origin.stats.paths.values()) == {1}
    names = [e["event"] for i in range(2) for e in cluster.log_of(i)]
    assert "store.unavailable" in names and "store.recovered" in names


def test_two_daemons_never_run_one_recurring_job_twice_at_once(
    cluster: Cluster, hosts_origin: Origin
) -> None:
    """Forty jobs every second over twenty hosts, two daemons: each job's runs follow one
    another (numbered 1, 2, 3… once each, at least the interval less its jitter apart at the
    origin), whichever daemon claims them, and both daemons run some."""
    origin = hosts_origin
    origin.reset_stats()
    cluster.env["FETCHER_MIN_INTERVAL"] = "1"
    urls = [origin.url(f"slow/300/every/{n}", i) for n in range(2) for i in range(len(HOSTS))]
    result = cluster.cli("submit", "--every", "1", "-f", "-", stdin="\n".join(urls) + "\n")
    assert result.returncode == 0, result.stderr
    cluster.start()
    cluster.start()

    def runs() -> dict[int, list[int]]:
        by_job: dict[int, list[int]] = {}
        for row in cluster.results():
            by_job.setdefault(row["job_id"], []).append(row["run"])
        return by_job

    assert wait_until(lambda: len(runs()) == 40 and min(map(len, runs().values())) >= 4, 60)
    cluster.stop_all()
    for job_runs in runs().values():
        assert sorted(job_runs) == list(range(1, len(job_runs) + 1)), job_runs
    for url in urls:
        host, path = urlsplit(url).netloc, urlsplit(url).path
        times = sorted(t for t, at, seen in origin.stats.sequence if (at, seen) == (host, path))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.9 - 0.05, (path, gaps)
    done = [sum(e["event"] == "job.done" for e in cluster.log_of(i)) for i in range(2)]
    assert min(done) > 0, done
