"""What a hop means for its job: final, retry, follow, refuse; backoff and Retry-After as
numbers."""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path

import pytest

from fetcher.config import Settings
from fetcher.errors import BlockedDestination
from fetcher.model import Hop, Job, JobState
from fetcher.policy import backoff_delay, decide, exchanges_of, retry_after_delay
from fetcher.urls import parse_url

NOW = 1_700_000_000.0


def job(attempts: int = 0, hops: int = 0) -> Job:
    t = parse_url("http://a.example/x")
    return Job(1, t.url, t.host_key, attempts, t, hops)


def hop(status: int | None, **kw: object) -> Hop:
    return Hop(parse_url("http://a.example/x"), 1, 5.0, status=status, **kw)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(db=tmp_path / "f.db", max_attempts=3, backoff_base=1, max_redirects=2)


@pytest.mark.parametrize("status", [200, 204, 304, 400, 404, 410])
def test_final_responses_are_done(settings: Settings, status: int) -> None:
    """2xx, unfollowed 3xx and 4xx but 408/429 end the job done after one request."""
    outcome = decide(job(), hop(status), settings, now=NOW).outcome
    assert outcome is not None and outcome.state is JobState.DONE and outcome.attempts == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_retryable_statuses_retry_then_fail(settings: Settings, status: int) -> None:
    """408, 429 and 5xx retry with backoff until FETCHER_MAX_ATTEMPTS, then fail."""
    first = decide(job(0), hop(status), settings, now=NOW, rand=lambda: 0.5).outcome
    assert first is not None and first.state is JobState.RETRYING
    assert first.next_attempt_at == NOW + 0.5
    last = decide(job(2), hop(status), settings, now=NOW).outcome
    assert last is not None and last.state is JobState.FAILED and last.attempts == 3
    assert last.error == f"gave up after 3 attempts: HTTP {status}"


def test_retry_after_pauses_the_host_and_delays_the_job(settings: Settings) -> None:
    """A 429 with Retry-After pauses the host that long; the job waits at least as long."""
    decision = decide(job(), hop(429, retry_after="7"), settings, now=NOW, rand=lambda: 0.0)
    assert decision.pause_s == 7 and not decision.throttled
    assert decision.outcome is not None and decision.outcome.next_attempt_at == NOW + 7
    assert decide(job(), hop(429), settings, now=NOW).throttled


def test_redirects_follow_until_the_limit(settings: Settings) -> None:
    """A 3xx with a usable Location is followed; past FETCHER_MAX_REDIRECTS it fails."""
    follow = decide(job(hops=0), hop(302, location="http://b.example/y"), settings, now=NOW)
    assert follow.follow is not None and follow.follow.host_key == "b.example"
    over = decide(job(hops=2), hop(302, location="/y"), settings, now=NOW).outcome
    assert over is not None and over.state is JobState.FAILED and over.error == "too many redirects"
    unusable = decide(job(), hop(302, location="ftp://x/"), settings, now=NOW).outcome
    assert unusable is not None and unusable.state is JobState.DONE and unusable.status == 302


def test_refusals_fail_at_once_and_count_no_request(settings: Settings) -> None:
    """A blocked destination fails the job without retrying and without a request counted."""
    refused = Hop(parse_url("http://a.example/"), 0, 0.0, refused=BlockedDestination("blocked"))
    outcome = decide(job(), refused, settings, now=NOW).outcome
    assert outcome is not None and outcome.state is JobState.FAILED and outcome.error == "blocked"
    assert exchanges_of(refused, NOW) == []


def test_a_body_fetcher_could_not_keep_retries_without_using_an_attempt(
    settings: Settings,
) -> None:
    """Disk full while keeping the body: the host answered (its response is counted as such),
    and the job waits to try again without an attempt used up, even on its last attempt."""
    local = hop(200, bytes=1024, local_error="body not kept: No space left on device")
    outcome = decide(job(attempts=2), local, settings, now=NOW, rand=lambda: 1.0).outcome
    assert outcome is not None and outcome.state is JobState.RETRYING
    assert outcome.attempts == 2 and outcome.next_attempt_at == NOW + 2.0
    assert outcome.error == "body not kept: No space left on device"
    assert [(e.status, e.bytes) for e in exchanges_of(local, NOW)] == [(200, 1024)]


def test_a_resent_request_counts_twice() -> None:
    """aiohttp re-sends once after a reset on a reused connection: the host saw two requests."""
    exchanges = exchanges_of(Hop(parse_url("http://a.example/"), 2, 3.0, status=200), NOW)
    assert [e.status for e in exchanges] == [None, 200]


def test_backoff_is_exponential_capped_with_full_jitter() -> None:
    """The ceiling doubles per attempt up to the cap; jitter scales it by [0, 1)."""
    ceilings = [backoff_delay(a, base_s=1, max_s=10, rand=lambda: 1.0) for a in range(1, 7)]
    assert ceilings == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(3, base_s=1, max_s=10, rand=lambda: 0.25) == 1.0


def test_retry_after_seconds_and_dates() -> None:
    """Retry-After in delta-seconds or as an HTTP date, capped; junk is ignored."""
    now = 1_700_000_000.0
    assert retry_after_delay("120", now=now, max_s=3600) == 120
    assert retry_after_delay("99999", now=now, max_s=3600) == 3600
    assert retry_after_delay(formatdate(now + 30, usegmt=True), now=now, max_s=3600) == 30
    assert retry_after_delay(formatdate(now - 30, usegmt=True), now=now, max_s=3600) == 0
    assert retry_after_delay("soon", now=now, max_s=3600) is None
    assert retry_after_delay(None, now=now, max_s=3600) is None
