"""Recurring jobs against the real daemon and the loopback origin, on both backends: runs that
revalidate and stop when cancelled, webhooks only for what changed, missed runs spread after a
restart, and failed jobs driven again by filter."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import pytest

from fetcher.demo import Origin
from tests.integration.api import start_with_api
from tests.integration.conftest import Fetcher, wait_until
from tests.integration.test_webhooks import SECRET, deliveries, verified
from tests.receiver import receiver

pytestmark = pytest.mark.integration


def submit(fetcher: Fetcher, *jobs: dict[str, Any] | str, flags: tuple[str, ...] = ()) -> list[int]:
    lines = "\n".join(j if isinstance(j, str) else json.dumps(j) for j in jobs) + "\n"
    result = fetcher.cli("submit", "-f", "-", *flags, stdin=lines)
    assert result.returncode == 0, result.stderr
    return [int(line) for line in result.stdout.split()]


def runs(fetcher: Fetcher, job_id: int) -> list[dict[str, Any]]:
    result = fetcher.cli("results", "--id", str(job_id))
    assert result.returncode == 0 or "no result" in result.stderr, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def arrivals(origin: Origin, path: str) -> list[float]:
    return [when for when, _, seen in origin.stats.sequence if seen == path]


def test_a_recurring_job_revalidates_each_run_and_stops_when_cancelled(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Every 2 s against an ETag: the runs after the first are 304s, unchanged, at least the
    interval less its jitter apart; `status` counts it and its next run; cancelled, it runs no
    more."""
    fetcher.set(min_interval=1)
    [job_id] = submit(fetcher, origin.url("etag/recurring"), flags=("--every", "2"))
    fetcher.start()
    assert wait_until(lambda: len(runs(fetcher, job_id)) >= 3, 30)
    status = fetcher.status()
    assert status["recurring"] == 1 and 0 <= status["next_run_in_s"] <= 2
    cancelled = fetcher.cli("cancel", str(job_id))
    assert cancelled.returncode == 0, cancelled.stderr
    sent = len(arrivals(origin, "/etag/recurring"))
    everything = runs(fetcher, job_id)
    assert [r["run"] for r in everything] == list(range(1, len(everything) + 1))
    assert everything[-1]["state"] == "cancelled"  # the run it was waiting for
    shown = everything[:-1]
    assert [r["status"] for r in shown] == [200] + [304] * (len(shown) - 1)
    assert [r["changed"] for r in shown] == [True] + [False] * (len(shown) - 1)
    later = [r for r in origin.stats.received if r.path == "/etag/recurring"][1:]
    assert all(r.headers.get("If-None-Match") == '"v1-/etag/recurring"' for r in later)
    times = arrivals(origin, "/etag/recurring")
    assert min(b - a for a, b in itertools.pairwise(times)) >= 2 * 0.9 - 0.01
    time.sleep(5)  # two and a half intervals
    assert len(arrivals(origin, "/etag/recurring")) <= sent + 1  # at most the run under way
    assert wait_until(lambda: fetcher.status()["cancelled"] == 1, 10)
    assert fetcher.status()["recurring"] == 0


def test_notify_changed_tells_of_changes_and_nothing_else(fetcher: Fetcher, origin: Origin) -> None:
    """The body changes on the 3rd run of 5: webhooks for the 1st (new) and the 3rd only, and
    one for the cancel that ends the job."""
    fetcher.set(min_interval=1, webhook_secret=SECRET)
    with receiver() as rx:
        job = {"url": origin.url("changes/3/page"), "every": 1, "notify": "changed",
               "webhook": rx.url}  # fmt: skip
        [job_id] = submit(fetcher, job)
        fetcher.start()
        assert wait_until(lambda: len(runs(fetcher, job_id)) >= 5, 30)
        fetcher.cli("cancel", str(job_id))
        shown = runs(fetcher, job_id)[:5]
        assert [r["changed"] for r in shown] == [True, False, True, False, False]
        assert wait_until(lambda: len(deliveries(fetcher, "delivered")) == 3, 30)
        time.sleep(1)  # nothing more comes
        told = [verified(request)["data"] for request in rx.got()]
    ran = sorted((d["run"], d["changed"], d["status"]) for d in told if d["state"] == "done")
    assert ran == [(1, True, 200), (3, True, 200)]
    [ended] = [d for d in told if d["state"] != "done"]
    assert (ended["state"], ended["run"] > 5) == ("cancelled", True)
    assert deliveries(fetcher, "pending") == []


def test_missed_runs_are_spread_over_the_jitter_after_a_restart(
    fetcher: Fetcher, origin: Origin
) -> None:
    """200 recurring jobs on one host without a rate, all overdue after the daemon was away:
    their runs are spread over the jitter window (3 s of a 30 s interval), not sent at once."""
    fetcher.set(min_interval=1)
    urls = [origin.url(f"ok/spread/{i}") for i in range(200)]
    submit(fetcher, *urls, flags=("--every", "30"))
    fetcher.drain()  # the first runs; then they wait for their next
    assert fetcher.status()["recurring"] == 200
    fetcher.sql("UPDATE jobs SET next_attempt_at = next_attempt_at - 300 WHERE state = 'retrying'")
    origin.reset_stats()
    fetcher.start()
    assert wait_until(lambda: len(origin.stats.received) >= 200, 30)
    times = sorted(when for when, _, _ in origin.stats.sequence)
    first = times[0]
    in_first_half_second = sum(1 for t in times if t - first < 0.5)
    assert times[-1] - first >= 1.5, f"all within {times[-1] - first:.2f} s"
    assert in_first_half_second <= 100, f"{in_first_half_second} of 200 in the first 0.5 s"


def retry(fetcher: Fetcher, *args: str) -> int:
    result = fetcher.cli("retry", "--json", *args)
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["count"])


def test_failed_jobs_are_driven_again_by_filter(fetcher: Fetcher, origin: Origin) -> None:
    """`fetcher retry` with --host, --error, --since and --dry-run; one active job of the same
    request keeps its failed twin out; each re-driven job runs once more and ends once."""
    fetcher.set(max_attempts=1)
    here, there = origin.host(0), origin.host(1)
    failing = [origin.url(f"status/500/{n}") for n in "abc"]
    elsewhere = [origin.url(f"status/500/{n}", 1) for n in "xy"]
    ids = submit(fetcher, *failing, *elsewhere, origin.url("reset/r"), origin.url("ok/fine"))
    fetcher.drain()
    assert (fetcher.status()["failed"], fetcher.status()["done"]) == (6, 1)
    assert retry(fetcher, "--state", "failed", "--dry-run") == 6
    assert (
        retry(fetcher, "--state", "failed", "--host", f"{there.split(':')[0]}:*", "--dry-run") == 2
    )
    assert retry(fetcher, "--state", "failed", "--error", "reset", "--dry-run") == 1
    assert retry(fetcher, "--state", "done", "--error", "reset", "--dry-run") == 0
    fetcher.sql(f"UPDATE results SET finished_at = finished_at - 7200 WHERE job_id = {ids[0]}")
    assert retry(fetcher, "--state", "failed", "--since", "1h", "--dry-run") == 5
    submit(fetcher, failing[1])  # the same request, active again: its failed twin stays
    assert retry(fetcher, "--state", "failed", "--host", here, "--dry-run") == 3  # a, c, reset
    assert fetcher.status()["failed"] == 6  # a dry run changed nothing

    assert (
        retry(
            fetcher,
            "--state",
            "failed",
            "--host",
            f"{there.split(':')[0]}:*",
            "--error",
            "HTTP 500",
        )
        == 2
    )
    fetcher.drain()
    status = fetcher.status()
    assert (status["failed"], status["queued"], status["retrying"]) == (7, 0, 0)  # b's twin too
    for job_id in ids[3:5]:
        assert [(r["run"], r["state"]) for r in runs(fetcher, job_id)] == [
            (1, "failed"),
            (2, "failed"),
        ]
    assert [r["run"] for r in runs(fetcher, ids[0])] == [1]
    sent = {path: sum(1 for r in origin.stats.received if r.path == path) for path in
            ("/status/500/x", "/status/500/y", "/status/500/a")}  # fmt: skip
    assert sent == {"/status/500/x": 2, "/status/500/y": 2, "/status/500/a": 1}


@pytest.mark.sqlite_only
def test_the_api_drives_failed_jobs_again(fetcher: Fetcher, origin: Origin) -> None:
    fetcher.set(max_attempts=1)
    submit(fetcher, origin.url("status/503/api"), origin.url("reset/api"))
    fetcher.drain()
    api = start_with_api(fetcher)
    answer = api.post("/v1/jobs:retry", json={"state": "failed", "dry_run": True})
    assert answer.json() == {"count": 2, "dry_run": True}
    answer = api.post(
        "/v1/jobs:retry", json={"state": "failed", "error": "HTTP 503", "since": "1h"}
    )
    assert answer.json() == {"count": 1, "dry_run": False}
    assert wait_until(lambda: api.feed()["results"][-1:] and len(api.feed()["results"]) == 3, 30)
    bad_bodies: list[Any] = [
        {"state": "running"}, {"state": "failed", "since": "soon"},
        {"state": "failed", "dry_run": "yes"}, {"state": "failed", "colour": "red"}, [],
    ]  # fmt: skip
    for bad in bad_bodies:
        refused = api.post("/v1/jobs:retry", json=bad)
        assert refused.status_code == 400, bad
        assert refused.headers["Content-Type"].startswith("application/problem+json")
