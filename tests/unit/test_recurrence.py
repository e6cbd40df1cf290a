"""Recurring jobs' pure core: what counts as changed, when the next run is due (jittered, never
before the interval less its jitter), and the adaptive interval kept within its bounds."""

from __future__ import annotations

import random

import pytest

from fetcher.errors import InvalidJob
from fetcher.jobspec import JobLimits, duration, read_job
from fetcher.model import JobState, Outcome, Recurrence
from fetcher.recurrence import DEC_RATE, INC_RATE, JITTER, changed, next_run

LIMITS = JobLimits(max_attempts=4, timeout_s=30.0, max_request_body=1024, min_interval=60.0)
URL = "http://example.com/page"


def done(status: int = 200, sha: str | None = "a" * 64) -> Outcome:
    return Outcome(1, JobState.DONE, 1, status=status, body_sha256=sha)


def test_a_304_or_the_same_body_is_unchanged_and_anything_else_changed() -> None:
    assert changed(done(304, None), "a" * 64) is False
    assert changed(done(), "a" * 64) is False
    assert changed(done(), "b" * 64) is True
    assert changed(done(), None) is True  # the first run
    assert changed(done(sha=None), "a" * 64) is True  # nothing to compare: told
    assert changed(Outcome(1, JobState.FAILED, 1, error="boom"), "a" * 64) is None


def test_the_next_run_is_one_interval_later_less_at_most_its_jitter() -> None:
    every = Recurrence(100.0)
    assert next_run(every, True, 1000.0, rand=lambda: 0.0) == (1100.0, 100.0)
    assert next_run(every, True, 1000.0, rand=lambda: 1.0) == (1100.0 - 100 * JITTER, 100.0)
    rng = random.Random(7)
    dues = [next_run(every, False, 0.0, rand=rng.random)[0] for _ in range(500)]
    assert min(dues) >= 100 * (1 - JITTER) and max(dues) <= 100
    assert max(dues) - min(dues) > 100 * JITTER * 0.8  # spread, not one instant


def test_a_fixed_interval_does_not_move_whatever_the_content_does() -> None:
    every = Recurrence(100.0)
    for was in (True, False, None):
        assert next_run(every, was, 0.0)[1] == 100.0


def test_adaptive_shrinks_on_change_grows_otherwise_and_holds_failures() -> None:
    every = Recurrence(100.0, adaptive=True, min_s=10.0, max_s=1000.0)
    assert next_run(every, True, 0.0)[1] == pytest.approx(100 * (1 - DEC_RATE))
    assert next_run(every, False, 0.0)[1] == pytest.approx(100 * (1 + INC_RATE))
    assert next_run(every, None, 0.0)[1] == 100.0  # a failed run says nothing of the content


@pytest.mark.parametrize("seed", range(20))
def test_adaptive_stays_within_its_bounds_over_20_runs(seed: int) -> None:
    """The interval carried from run to run never leaves [min_every, max_every], and a run is
    never due sooner than min_every less its jitter (Nutch's NUTCH-1564: unchanged pages were
    fetched again every cycle)."""
    rng = random.Random(seed)
    low, high = 60.0, 3600.0
    interval, now = 600.0, 0.0
    for _ in range(20):
        was = rng.choice([True, False, None])
        due, interval = next_run(Recurrence(interval, True, low, high), was, now, rng.random)
        assert low <= interval <= high
        assert due - now >= low * (1 - JITTER)
        now = due
    # long runs of one kind pin it at a bound
    for was, bound in ((True, low), (False, high)):
        interval = 600.0
        for _ in range(20):
            _, interval = next_run(Recurrence(interval, True, low, high), was, 0.0)
        assert interval == bound


def test_durations_read_as_people_write_them() -> None:
    assert [duration(v, "every") for v in (90, 2.5, "90", "90s", "30m", "6h", "1d", " 1.5h")] == [
        90.0, 2.5, 90.0, 90.0, 1800.0, 21600.0, 86400.0, 5400.0,
    ]  # fmt: skip
    for bad in ("", "6 hours", "-5m", "1w", -5, True, None, float("inf"), [1]):
        with pytest.raises(InvalidJob, match="every: seconds, or a duration"):
            duration(bad, "every")


def test_every_and_its_companions_are_read_and_checked() -> None:
    job = read_job({"url": URL, "every": "6h", "notify": "changed"}, LIMITS)
    assert job.recurrence == Recurrence(21600.0) and job.notify_changed
    assert read_job({"url": URL, "every": 600, "notify": "all"}, LIMITS).notify_changed is False
    adaptive = read_job({"url": URL, "every": "1h", "adaptive": True}, LIMITS).recurrence
    assert adaptive == Recurrence(3600.0, True, 360.0, 36000.0)  # a tenth and ten times by default
    bounded = {"url": URL, "every": "1h", "adaptive": True, "min_every": "10m", "max_every": "1d"}
    assert read_job(bounded, LIMITS).recurrence == Recurrence(3600.0, True, 600.0, 86400.0)
    assert read_job({"url": URL}, LIMITS).recurrence is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"every": 59}, "every: at least FETCHER_MIN_INTERVAL (60 s)"),
        ({"every": "1m", "adaptive": True, "min_every": 30}, "min_every ≤ every ≤ max_every"),
        ({"every": "1h", "adaptive": True, "max_every": "30m"}, "min_every ≤ every ≤ max_every"),
        ({"every": "1h", "min_every": "30m"}, "min_every, max_every: only with adaptive"),
        ({"adaptive": True}, "adaptive, min_every, max_every: only with every"),
        ({"every": "1h", "adaptive": "yes"}, "adaptive: true or false"),
        ({"every": "soon"}, "every: seconds, or a duration"),
        ({"every": "1h", "notify": "sometimes"}, "notify"),
    ],
)
def test_a_bad_recurrence_is_refused_with_its_reason(
    fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidJob) as caught:
        read_job({"url": URL, **fields}, LIMITS)
    assert reason in caught.value.reason
