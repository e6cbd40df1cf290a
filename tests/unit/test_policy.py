"""What a hop means for its job: final, retry, follow, refuse; backoff and Retry-After as
numbers."""

from __future__ import annotations

import math
from email.utils import formatdate
from pathlib import Path

import pytest

from fetcher.config import Settings
from fetcher.errors import BlockedDestination
from fetcher.model import Exchange, Hop, Job, JobState, Outcome
from fetcher.policy import (
    Decision,
    backoff_delay,
    carried_on,
    decide,
    exchanges_of,
    redirected,
    retry_after_delay,
)
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


URL = "http://a.example/x"


def test_a_final_outcome_carries_everything_the_hop_knew(settings: Settings) -> None:
    done = hop(
        200, bytes=10, body_sha256="ab" * 32, body_path="ab/" + "ab" * 32, etag='"v1"',
        last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
    )  # fmt: skip
    assert decide(job(attempts=1), done, settings, now=NOW) == Decision(
        outcome=Outcome(
            1, JobState.DONE, 2, status=200, bytes=10, latency_ms=5.0, final_url=URL,
            body_sha256="ab" * 32, body_path="ab/" + "ab" * 32, etag='"v1"',
            last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
        )
    )  # fmt: skip


def test_no_response_retries_with_its_reason_then_gives_up(settings: Settings) -> None:
    """A network error is retried after the backoff with the error as the reason (or "no
    response" when there is none); the last attempt fails naming it."""
    error = hop(None, error="connect timeout")
    assert decide(job(0), error, settings, now=NOW, rand=lambda: 0.5) == Decision(
        outcome=Outcome(1, JobState.RETRYING, 1, error="connect timeout", next_attempt_at=NOW + 0.5)
    )
    silent = decide(job(1), hop(None), settings, now=NOW, rand=lambda: 0.5).outcome
    assert silent == Outcome(1, JobState.RETRYING, 2, error="no response", next_attempt_at=NOW + 1)
    assert decide(job(2), error, settings, now=NOW) == Decision(
        outcome=Outcome(
            1, JobState.FAILED, 3, error="gave up after 3 attempts: connect timeout",
            latency_ms=5.0, final_url=URL,
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "retry_after", "pause_s", "throttled"),
    [(429, "7", 7.0, False), (503, "7", 7.0, False), (429, None, None, True),
     (503, None, None, False), (500, "7", None, False), (504, "7", None, False),
     (429, "junk", None, True)],
)  # fmt: skip
def test_what_a_host_says_about_itself(
    settings: Settings, status: int, retry_after: str | None, pause_s: float | None,
    throttled: bool,
) -> None:  # fmt: skip
    """Retry-After counts on 429 and 503 only; a 429 without a readable one throttles."""
    decision = decide(
        job(), hop(status, retry_after=retry_after), settings, now=NOW, rand=lambda: 0
    )
    assert (decision.pause_s, decision.throttled) == (pause_s, throttled)
    assert decision.outcome == Outcome(
        1, JobState.RETRYING, 1, status=status, error=f"HTTP {status}",
        next_attempt_at=NOW + (pause_s or 0.0),
    )  # fmt: skip


def test_only_a_redirect_status_with_a_location_is_followed(settings: Settings) -> None:
    assert decide(job(), hop(200, location="/y"), settings, now=NOW).follow is None
    assert decide(job(), hop(302), settings, now=NOW).outcome == Outcome(
        1, JobState.DONE, 1, status=302, latency_ms=5.0, final_url=URL
    )
    one_left = decide(job(hops=1), hop(307, location="/y"), settings, now=NOW)
    assert one_left.follow == parse_url("http://a.example/y") and one_left.outcome is None


def test_a_body_not_kept_waits_by_its_attempt_number_at_least_the_first(
    settings: Settings,
) -> None:
    """Its delay is the backoff of the attempt it is on (the first one for a new job)."""
    local = hop(200, local_error="body not kept: disk full")
    fresh = decide(job(attempts=0), local, settings, now=NOW, rand=lambda: 1.0).outcome
    assert fresh == Outcome(
        1, JobState.RETRYING, 0, status=200, error="body not kept: disk full",
        next_attempt_at=NOW + 1.0,
    )  # fmt: skip


def test_every_send_is_an_exchange_the_last_one_with_the_response() -> None:
    host = parse_url(URL).host_key
    three = Hop(parse_url(URL), 3, 5.0, status=200, bytes=10)
    assert exchanges_of(three, NOW) == [
        Exchange(host, None, 0, 0.0, NOW), Exchange(host, None, 0, 0.0, NOW),
        Exchange(host, 200, 10, 5.0, NOW),
    ]  # fmt: skip
    unsent = Hop(parse_url(URL), 0, 5.0, error="connect error: refused")
    assert exchanges_of(unsent, NOW) == [Exchange(host, None, 0, 5.0, NOW)]  # tried: counted


def test_backoff_never_overflows() -> None:
    """The exponent stops at 60: a job retried for ever still gets a finite delay."""
    assert backoff_delay(10**6, base_s=1, max_s=math.inf, rand=lambda: 1.0) == 2.0**60
    assert backoff_delay(61, base_s=1, max_s=math.inf, rand=lambda: 1.0) == 2.0**60
    assert backoff_delay(1, base_s=3, max_s=10, rand=lambda: 0.5) == 1.5


def test_a_retry_after_date_is_counted_from_now(settings: Settings) -> None:
    """An HTTP date 30 s ahead of `now` pauses the host 30 s."""
    said = hop(503, retry_after=formatdate(NOW + 30, usegmt=True))
    assert decide(job(), said, settings, now=NOW, rand=lambda: 0).pause_s == 30


def _request(method: str, *, retry: bool = False, max_attempts: int | None = None) -> Job:
    j = job()
    j.method = j.first_method = method
    j.retry, j.max_attempts = retry, max_attempts
    return j


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_an_unsafe_request_that_was_sent_is_not_sent_again(settings: Settings, method: str) -> None:
    """A POST or PATCH that reached the server (a 503, a reset, a timeout) ends failed: a
    second one could do twice what it asks; with `retry: true` it is retried as any job."""
    for answer in (hop(503), hop(None, error="connection reset")):
        outcome = decide(_request(method), answer, settings, now=NOW).outcome
        assert outcome is not None and outcome.state is JobState.FAILED
        assert outcome.error is not None and outcome.error.startswith(f"{method} not retried")
        asked = decide(_request(method, retry=True), answer, settings, now=NOW).outcome
        assert asked is not None and asked.state is JobState.RETRYING
    kept = decide(_request(method), hop(200, local_error="body not kept: full"), settings, now=NOW)
    assert kept.outcome is not None and kept.outcome.state is JobState.FAILED


def test_an_unsafe_request_that_never_went_out_is_retried(settings: Settings) -> None:
    """Nothing sent (no connection): a POST is safe to send, and is retried."""
    outcome = decide(
        _request("POST"), hop(None, error="connect error: refused", unsent=True), settings, now=NOW
    ).outcome
    assert outcome is not None and outcome.state is JobState.RETRYING


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_idempotent_methods_are_retried(settings: Settings, method: str) -> None:
    outcome = decide(_request(method), hop(503), settings, now=NOW).outcome
    assert outcome is not None and outcome.state is JobState.RETRYING


def test_a_job_s_own_attempts_end_it_sooner(settings: Settings) -> None:
    """max_attempts of the job (at most the global one) is when it gives up."""
    outcome = decide(_request("GET", max_attempts=1), hop(503), settings, now=NOW).outcome
    assert outcome is not None and outcome.state is JobState.FAILED
    assert outcome.error == "gave up after 1 attempts: HTTP 503"


@pytest.mark.parametrize(
    ("status", "method", "after"),
    [(303, "POST", "GET"), (303, "PUT", "GET"), (303, "HEAD", "HEAD"), (302, "POST", "GET"),
     (301, "POST", "GET"), (301, "PUT", "PUT"), (307, "POST", "POST"), (308, "PATCH", "PATCH")],
)  # fmt: skip
def test_a_redirect_keeps_or_changes_the_method_as_browsers_do(
    status: int, method: str, after: str
) -> None:
    """303 (and 302, and a POST's 301) go on as GET without the body; 307/308 keep both."""
    j = _request(method)
    j.body = b"payload"
    redirected(j, status, parse_url("http://a.example/next"))
    assert (j.method, j.body) == (after, b"payload" if after == method else None)
    assert j.first_method == method and j.target.url == "http://a.example/next"


def test_credentials_stay_with_their_origin() -> None:
    """To another origin (host, port or scheme) a request goes without Authorization,
    Proxy-Authorization and Cookie; on the same origin it keeps them."""
    secrets = (("Authorization", "Bearer s"), ("Cookie", "c=1"), ("Proxy-Authorization", "p"))
    for url, kept in (
        ("http://a.example/same", True),
        ("https://a.example/x", False),
        ("http://a.example:81/x", False),
        ("http://b.example/x", False),
    ):
        j = _request("GET")
        j.headers = (*secrets, ("X-Other", "1"))
        redirected(j, 302, parse_url(url))
        assert j.headers == ((*secrets, ("X-Other", "1")) if kept else (("X-Other", "1"),))


def test_a_moved_job_goes_on_without_credentials_and_without_a_dropped_body() -> None:
    j = _request("POST")
    j.headers, j.body = (("Cookie", "c"), ("Accept", "x")), b"b"
    assert carried_on(j) == ((("Accept", "x"),), b"b")  # a 307 kept the method
    j.method = "GET"  # a 303 made it a GET before it moved
    assert carried_on(j) == ((("Accept", "x"),), None)
