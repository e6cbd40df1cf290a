"""A database written by the previous release is taken over with nothing lost, on both
backends: the previous release's own code (PREVIOUS_RELEASE, from this repository's history)
queues jobs, fetches some, leaves some retrying and some running when it is killed; this
release migrates it at start, and every job ends once, its results kept, the counters adding
up from where they were."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from fetcher.demo import Origin

from .conftest import Fetcher, wait_until

pytestmark = pytest.mark.integration

# Each previous release is the parent of the commit that brought the next schema in, found by
# the first line of that schema's migration (a commit's hash changes when history is rebased):
# schema 4 (SQLite) / 1 (PostgreSQL), URLs only, GET only; schema 5 / 2, jobs that are
# requests, before the API (results one per job, no feed cursor, no outbox); schema 6 / 3, the
# API and webhooks, before recurring jobs; schema 7 / 4, before the digest index was narrowed
# to bodies of the layout before WARC.
NEXT_MIGRATIONS = [
    "CREATE TABLE job_requests",
    "CREATE TABLE webhooks",
    "ALTER TABLE jobs ADD COLUMN every_s",
    "CREATE INDEX results_legacy_body",
]
REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, check=False, timeout=60
    )


def release_before(migration: str) -> str:
    """The commit before the one that added `migration` to the SQLite schema."""
    found = _git("log", "--format=%H", "--reverse", "-S", migration, "--",
                 "src/fetcher/sqlite/schema.py")  # fmt: skip
    added = found.stdout.decode().split()
    if found.returncode != 0 or not added:
        pytest.fail(f"no commit adds {migration!r}: {found.stderr.decode()[-500:]}")
    return f"{added[0]}^"


@pytest.fixture(scope="module", params=NEXT_MIGRATIONS)
def previous_src(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A previous release's `src/`, from git (a clean clone has the history)."""
    release = release_before(request.param)
    archive = _git("archive", release, "src")
    if archive.returncode != 0:
        pytest.fail(f"git archive {release} failed: {archive.stderr.decode()[-500:]}")
    into = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def test_a_database_of_the_previous_release_is_taken_over_with_nothing_lost(
    fetcher: Fetcher, origin: Origin, previous_src: Path
) -> None:
    hosts_file = fetcher.workdir / "hosts.toml"  # the last host: one request a minute
    hosts_file.write_text(f'[hosts."{origin.host(3)}"]\nrate = 0.016\n')
    old = {**fetcher.env, "PYTHONPATH": str(previous_src), "FETCHER_HOSTS_FILE": str(hosts_file)}
    done = [origin.url(f"ok/d{n}") for n in range(6)]
    retrying = [origin.url(f"pause/4/r{n}", 1) for n in range(3)]  # 503 + Retry-After: 4
    running = [origin.url(f"slow/3000/s{n}", 2) for n in range(2)]
    queued = [origin.url(f"ok/q{n}", 3) for n in range(10)]
    urls = "\n".join(done + retrying + running + queued) + "\n"
    submitted = subprocess.run(
        [sys.executable, "-m", "fetcher", "submit", "-f", "-"], input=urls, env=old,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    daemon = fetcher.start(env=old)
    in_flight = [(origin.host(2), f"/slow/3000/s{n}") for n in range(2)]
    assert wait_until(
        lambda: all(origin.stats.paths[p] for p in in_flight) and _states(fetcher)["done"] >= 6,
        timeout=30,
    )
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    before = _states(fetcher)
    assert before["retrying"] >= 1 and before["running"] >= 2 and before["queued"] >= 5, before
    old_results = sorted(fetcher.sql("SELECT job_id, url, state, finished_at FROM results"))
    old_requests = fetcher.sql("SELECT sum(requests) FROM host_stats")[0][0]

    # this release: the read commands say the database needs migrating, and change nothing
    refused = fetcher.cli("results")
    assert refused.returncode == 1 and "start the daemon" in refused.stderr
    again = fetcher.cli("submit", "--json", queued[-1], origin.url("ok/new"))  # migrates
    answers = [json.loads(line) for line in again.stdout.splitlines()]
    assert [a["duplicate"] for a in answers] == [True, False]  # the old job's fingerprint
    fetcher.drain(timeout=120)

    total = len(done + retrying + running + queued) + 1
    status = fetcher.status()
    assert status["done"] == total and status["queued"] + status["running"] == 0, status
    results = sorted(fetcher.sql("SELECT job_id, url, state, finished_at FROM results"))
    jobs = {row[0] for row in fetcher.sql("SELECT id FROM jobs")}
    assert len(results) == total and {row[0] for row in results} == jobs  # each job ends once
    assert set(old_results) <= set(results)  # kept as they were
    shown = fetcher.results()
    assert all(row["method"] == "GET" and row["state"] == "done" for row in shown)
    assert sorted(row["cursor"] for row in shown) == list(range(1, total + 1))  # each its place
    assert fetcher.sql("SELECT sum(requests) FROM host_stats")[0][0] > old_requests
    # the old counts and the new, added up: every request the origin saw, but the two the
    # killed daemon had in flight (a crash loses what was not committed; they were sent again)
    stats = fetcher.stats()
    for host, seen in origin.stats.requests.items():
        killed = len(in_flight) if host == origin.host(2) else 0
        assert stats[host]["requests"] == seen - killed, (host, stats[host], seen)
    twice = {path for (_host, path), n in origin.stats.paths.items() if n > 1}
    assert twice <= {p for _, p in in_flight} | {f"/pause/4/r{n}" for n in range(3)}


def _states(fetcher: Fetcher) -> dict[str, int]:
    """Jobs by state, read with SQL (the read commands refuse a database not migrated yet)."""
    return {str(state): int(n) for state, n in fetcher.sql("SELECT state, jobs FROM queue")}
