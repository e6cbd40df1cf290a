"""The records that travel between the queue, the scheduler, the fetch step and the store, and
the rules about them that every backend follows (which states are final, which outcomes keep
their validators, when a queue is idle): written here once, read by each backend."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from fetcher.errors import Refused
from fetcher.secrets import is_secret, shown_headers
from fetcher.urls import Target

__all__ = [
    "ACTIVE_STATES", "CANCELLED", "DISALLOWED", "FINAL_STATES", "METHODS", "REDIRECT_STATUSES",
    "UNSAFE_METHODS", "Exchange", "Hop", "HostLease", "HostRate", "HostWalk", "Job", "JobRequest",
    "JobState", "Outcome", "Recurrence", "Submitted", "Validators", "Verdict", "active_jobs",
    "is_secret", "shown_headers",
]  # fmt: skip

DISALLOWED = "disallowed by robots.txt"  # the reason of a job its site's robots.txt forbids
CANCELLED = "cancelled"  # the reason of a job cancelled before it ended

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# retried only when nothing was sent, unless the job says `"retry": true`: sent twice, they
# could do twice what they ask (GET, HEAD, OPTIONS, PUT and DELETE may be repeated)
UNSAFE_METHODS = frozenset({"POST", "PATCH"})

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})  # followed when Location is usable


class JobState(StrEnum):
    QUEUED = "queued"
    RETRYING = "retrying"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


# a result is kept; nothing follows
FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = (JobState.QUEUED, JobState.RETRYING, JobState.RUNNING)


def active_jobs(counts: Mapping[str, int]) -> int:
    """Jobs queued, retrying or running, of `counts` (jobs by state): 0 means the queue is idle."""
    return sum(counts.get(state, 0) for state in ACTIVE_STATES)


class JobRequest(NamedTuple):
    """A job as submitted: what to send, and how the queue should treat it. (A named tuple:
    immutable, and made in C: a bulk submit makes a million.)"""

    target: Target
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    priority: int = 0  # higher goes first
    not_before: float | None = None  # unix time before which it is not sent
    max_attempts: int | None = None  # None: FETCHER_MAX_ATTEMPTS
    timeout_s: float | None = None  # None: FETCHER_TIMEOUT
    retry: bool = False  # a POST or PATCH retried even once it was sent
    metadata: str | None = None  # a JSON object's text, returned with every result
    webhook: str | None = None  # told when the job ends (None: FETCHER_WEBHOOK_URL, if set)
    recurrence: Recurrence | None = None  # due again after each run
    notify_changed: bool = False  # the webhook only for runs whose content changed, and failures

    @property
    def body_sha256(self) -> str:
        """The body's sha256 ('' without a body)."""
        return hashlib.sha256(self.body).hexdigest() if self.body is not None else ""

    @property
    def fingerprint(self) -> tuple[str, str, str]:
        """What makes two jobs the same request: one already queued, retrying or running is
        not queued twice (the URL, the method and the body's sha256; in this order, the index
        of a batch sorted by host is written page after page)."""
        return self.target.url, self.method, self.body_sha256

    @property
    def plain(self) -> bool:
        """A bare URL: a GET with nothing but fetcher's defaults (the common case)."""
        return self[1:] == _PLAIN_FIELDS


_PLAIN_FIELDS = ("GET", (), None, 0, None, None, None, False, None, None, None, False)


class Recurrence(NamedTuple):
    """How a job recurs: due again `every_s` after each run's final outcome (jittered); with
    `adaptive`, the interval follows how often the content changes, within min_s … max_s."""

    every_s: float
    adaptive: bool = False
    min_s: float | None = None
    max_s: float | None = None


class Submitted(NamedTuple):
    """What the queue did with a submitted job: the new job's id, or the id of the same
    request already queued, retrying or running (`duplicate`)."""

    id: int
    duplicate: bool


@dataclass(slots=True)
class Job:
    """A claimed job. `target` is the hop being fetched: the URL, or where it redirected."""

    id: int
    url: str
    host: str  # the host key the queue knows the job by (its first hop)
    attempts: int  # attempts made before the current one
    target: Target
    hops: int = 0
    # what the last fetch of this URL left for a conditional GET (None: no validator kept)
    validators: Validators | None = None
    # set on the one job that is not in the queue: the fetch of this origin's robots.txt
    robots_for: str | None = None
    # the request for the hop being fetched (a redirect may change the method, drop the body
    # and, to another origin, the credentials)
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    priority: int = 0
    max_attempts: int | None = None  # None: FETCHER_MAX_ATTEMPTS
    timeout_s: float | None = None  # None: FETCHER_TIMEOUT
    retry: bool = False  # a POST or PATCH retried even once it was sent
    first_method: str = "GET"  # the method as submitted (results name it)
    recurrence: Recurrence | None = None  # with its current interval
    last_sha256: str | None = None  # the body digest of its last done run (for `changed`)


@dataclass(frozen=True, slots=True)
class Validators:
    """A URL's `ETag` / `Last-Modified` from its last fetch, and where its body is kept."""

    etag: str | None
    last_modified: str | None
    body_sha256: str | None = None
    body_path: str | None = None


@dataclass(slots=True)
class Hop:
    """What one request of a job got. `sends` counts requests that went out (aiohttp re-sends
    once on a reused connection that resets); `status` None means no response; `local_error`
    says fetcher itself failed to keep what came (the host's answer still counts as given)."""

    target: Target
    sends: int
    latency_ms: float
    status: int | None = None
    bytes: int = 0
    location: str | None = None
    retry_after: str | None = None
    error: str | None = None
    refused: Refused | None = None
    local_error: str | None = None
    unsent: bool = False  # the request never went out (no connection): safe to send again
    body_sha256: str | None = None
    body_path: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request on the wire and what came back: what a host's counters count.

    `status` is None when no response came (connect error, timeout, reset, truncated body).
    `disallowed` marks a job its site's robots.txt forbids: no request went out, and the host's
    counters count it apart."""

    host: str
    status: int | None
    bytes: int
    latency_ms: float
    at: float  # unix time the request ended
    disallowed: bool = False


@dataclass(slots=True)
class Outcome:
    """How one attempt of a job ended: final (`done`/`failed`) or to be retried."""

    job_id: int
    state: JobState
    attempts: int
    status: int | None = None
    bytes: int = 0
    error: str | None = None
    latency_ms: float | None = None
    final_url: str | None = None
    next_attempt_at: float | None = None  # for `retrying`
    body_sha256: str | None = None
    body_path: str | None = None
    etag: str | None = None  # the response's validators, kept for a conditional GET next time
    last_modified: str | None = None
    content_type: str | None = None  # the response's, served with its kept body
    # state `queued`: the job goes on at this hop (`hops` made), queued under the hop's host
    # (a redirect to a host another daemon holds: that daemon sends the next request), with
    # this method (a 303 made it GET)
    moved_to: Target | None = None
    hops: int = 0
    moved_method: str | None = None
    method: str = "GET"  # the job's method, as submitted
    # a final outcome's: whether the content differs from the last done run's (None: failed);
    # a recurring job's next run (it goes back to `retrying` for it) and interval after this
    changed: bool | None = None
    next_run_at: float | None = None
    interval_s: float | None = None

    @property
    def final(self) -> bool:
        """Whether the job ends here (its result is kept)."""
        return self.state in FINAL_STATES

    @property
    def keeps_validators(self) -> bool:
        """Whether a later GET of the job's URL may be conditional on this answer: a done GET,
        with an ETag or a Last-Modified (kept only where the answer was for the URL itself)."""
        return (
            self.state is JobState.DONE
            and self.method == "GET"
            and bool(self.etag or self.last_modified)
        )


@dataclass(frozen=True, slots=True)
class HostRate:
    """A host's rate schedule as it outlives the daemon that kept it (handed to the next holder,
    or to the next start): GCRA's theoretical arrival time and the end of its pause, in unix
    time (0: none)."""

    tat: float = 0.0
    paused_until: float = 0.0


@dataclass(frozen=True, slots=True)
class HostLease:
    """A host this daemon has just acquired, with the schedule its last holder left."""

    host: str
    rate: HostRate


class HostWalk(NamedTuple):
    """One page of the hosts with queued jobs, in key order, and where the next page starts:
    after `resume_after` (None: this page was the last)."""

    hosts: list[str]
    resume_after: str | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one fetch of an origin's robots.txt said, as the database keeps it (the rules in it
    are read by `fetcher.robots`)."""

    origin: str
    fetched_at: float  # unix time
    status: int | None  # None: no response
    body: str = ""
    crawl_delay: float | None = None  # the interval the site asks of fetcher's token, uncapped

    @property
    def size(self) -> int:
        return len(self.body.encode())

    @property
    def usable(self) -> bool:
        """Whether the answer settles the origin's rules (or must be asked again later)."""
        return self.status is not None and self.status < 500 and self.status != 429

    @property
    def has_rules(self) -> bool:
        """Whether its body holds rules (a 2xx): else everything is allowed, or nothing."""
        return self.status is not None and 200 <= self.status < 300
