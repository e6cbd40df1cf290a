"""What a hop's result means for its job and its host: a pure function, tested with numbers.

fetcher could not keep the body         → retry later, the attempt not used up (our fault)
refused (blocked, too large)            → failed, no retry
no response (network error, timeout)    → retry, or failed when attempts are used up
301/302/303/307/308 + usable Location   → follow: the next hop waits for its own host (a 303
                                          makes it a GET; to another origin it goes without
                                          its credentials: `redirected`)
408, 429, 5xx                           → retry (429/503 Retry-After pauses the host)
anything else                           → done

A POST or PATCH is retried only when nothing was sent, unless the job says `"retry": true`: a
second one could do twice what it asks. Backoff and Retry-After are pure functions too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from fetcher.config import Settings
from fetcher.errors import InvalidURL
from fetcher.model import REDIRECT_STATUSES, UNSAFE_METHODS, Exchange, Hop, Job, JobState, Outcome
from fetcher.urls import Target, join_redirect

__all__ = [
    "Decision", "backoff_delay", "carried_on", "decide", "exchanges_of", "redirected",
    "retry_after_delay",
]  # fmt: skip

# what a request does not take to another origin (as browsers and httpx do)
CROSS_ORIGIN_DROPPED = frozenset({"authorization", "proxy-authorization", "cookie"})


@dataclass(slots=True)
class Decision:
    """Either `follow` (the next hop) or `outcome` (this attempt is over), plus what the host
    said about itself: `pause_s` (Retry-After), `throttled` (429 without it)."""

    follow: Target | None = None
    outcome: Outcome | None = None
    pause_s: float | None = None
    throttled: bool = False


def exchanges_of(hop: Hop, now: float) -> list[Exchange]:
    """The requests a hop put on the wire, as the host's counters count them. A request
    re-sent by the client after a reset is one more request, ended by an error."""
    host = hop.target.host_key
    sent = hop.sends if hop.refused is not None else max(hop.sends, 1)
    if sent == 0:
        return []
    resent = [Exchange(host, None, 0, 0.0, now)] * (sent - 1)
    return [*resent, Exchange(host, hop.status, hop.bytes, hop.latency_ms, now)]


def decide(
    job: Job,
    hop: Hop,
    settings: Settings,
    *,
    now: float,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """The next step for `job` after `hop` (its `job.hops`-th redirect, 0 for the first)."""
    if hop.local_error is not None:
        if not _may_send_again(job, hop):
            reason = f"{job.method} not sent again: {hop.local_error}"
            return Decision(outcome=_final(job, hop, JobState.FAILED, reason))
        delay = backoff_delay(
            max(job.attempts, 1), base_s=settings.backoff_base, max_s=settings.backoff_max,
            rand=rand,
        )  # fmt: skip
        outcome = Outcome(
            job.id, JobState.RETRYING, job.attempts, status=hop.status, error=hop.local_error,
            next_attempt_at=now + delay, method=job.first_method,
        )  # fmt: skip
        return Decision(outcome=outcome)
    if hop.refused is not None:
        return Decision(outcome=_final(job, hop, JobState.FAILED, hop.refused.reason))
    status = hop.status
    if status is None:
        return _retry(job, hop, settings, now, rand, hop.error or "no response", 0.0)
    if status in REDIRECT_STATUSES and hop.location:
        try:
            target = join_redirect(hop.target.url, hop.location)
        except InvalidURL:
            return Decision(outcome=_final(job, hop, JobState.DONE, None))
        if job.hops >= settings.max_redirects:
            return Decision(outcome=_final(job, hop, JobState.FAILED, "too many redirects"))
        return Decision(follow=target)
    if status in (408, 429) or status >= 500:
        asked = None
        if status in (429, 503):
            asked = retry_after_delay(hop.retry_after, now=now, max_s=settings.retry_after_max)
        decision = _retry(job, hop, settings, now, rand, f"HTTP {status}", asked or 0.0)
        decision.pause_s = asked
        decision.throttled = status == 429 and asked is None
        return decision
    return Decision(outcome=_final(job, hop, JobState.DONE, None))


def _may_send_again(job: Job, hop: Hop) -> bool:
    """Whether the job's request may go out once more: yes for every method but POST and
    PATCH; for those, when nothing was sent, or when the job asks for it."""
    return job.method not in UNSAFE_METHODS or job.retry or hop.unsent


def redirected(job: Job, status: int, to: Target) -> None:
    """`job`'s request as it follows a redirect to `to`, by the rules of browsers and httpx: a
    303 (and a 302, and a 301 of a POST) goes on as a GET without the body, 307 and 308 keep
    both; to another origin (scheme, host, port) without Authorization, Proxy-Authorization
    and Cookie."""
    method = job.method
    if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
        method = "GET"
    if method != job.method:
        job.method, job.body = method, None
    if (to.scheme, to.host_key) != (job.target.scheme, job.target.host_key):
        job.headers = tuple(h for h in job.headers if h[0].lower() not in CROSS_ORIGIN_DROPPED)
    job.target = to


def carried_on(job: Job) -> tuple[tuple[tuple[str, str], ...], bytes | None]:
    """The headers and body a job moved past a redirect goes on with (it went to another
    host, so another origin): no credentials, and no body if the redirect made it a GET."""
    headers = tuple(h for h in job.headers if h[0].lower() not in CROSS_ORIGIN_DROPPED)
    return headers, job.body if job.method == job.first_method else None


def _final(job: Job, hop: Hop, state: JobState, error: str | None) -> Outcome:
    return Outcome(
        job.id,
        state,
        job.attempts + 1,
        status=hop.status,
        bytes=hop.bytes,
        error=error,
        latency_ms=hop.latency_ms,
        final_url=hop.target.url,
        body_sha256=hop.body_sha256,
        body_path=hop.body_path,
        etag=hop.etag,
        last_modified=hop.last_modified,
        content_type=hop.content_type,
        method=job.first_method,
    )


def _retry(
    job: Job,
    hop: Hop,
    settings: Settings,
    now: float,
    rand: Callable[[], float],
    reason: str,
    least_delay_s: float,
) -> Decision:
    attempts = job.attempts + 1
    if not _may_send_again(job, hop):
        return Decision(
            outcome=_final(job, hop, JobState.FAILED, f"{job.method} not retried: {reason}")
        )
    if attempts >= (job.max_attempts or settings.max_attempts):
        outcome = _final(job, hop, JobState.FAILED, f"gave up after {attempts} attempts: {reason}")
        return Decision(outcome=outcome)
    delay = backoff_delay(
        attempts, base_s=settings.backoff_base, max_s=settings.backoff_max, rand=rand
    )
    delay = max(delay, least_delay_s)
    outcome = Outcome(
        job.id,
        JobState.RETRYING,
        attempts,
        status=hop.status,
        error=reason,
        next_attempt_at=now + delay,
        method=job.first_method,
    )
    return Decision(outcome=outcome)


def backoff_delay(
    attempt: int, *, base_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 = the first): exponential
    backoff, capped at `max_s`, with full jitter (uniform between 0 and the cap)."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    return ceiling * rand()


def retry_after_delay(value: str | None, *, now: float, max_s: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP date), at most `max_s`;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), max_s)
