"""The records that travel between the queue, the scheduler, the fetch step and the store, and
the rules about them that every backend follows (which states are final, which outcomes keep
their validators, when a queue is idle): written here once, read by each backend."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from fetcher.errors import Refused
from fetcher.urls import Target

__all__ = [
    "ACTIVE_STATES", "DISALLOWED", "FINAL_STATES", "REDIRECT_STATUSES", "Exchange", "Hop",
    "HostLease", "HostRate", "HostWalk", "Job", "JobState", "Outcome", "Validators", "Verdict",
    "active_jobs",
]  # fmt: skip

DISALLOWED = "disallowed by robots.txt"  # the reason of a job its site's robots.txt forbids

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})  # followed when Location is usable


class JobState(StrEnum):
    QUEUED = "queued"
    RETRYING = "retrying"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED})  # a result is kept; nothing follows
ACTIVE_STATES = (JobState.QUEUED, JobState.RETRYING, JobState.RUNNING)


def active_jobs(counts: Mapping[str, int]) -> int:
    """Jobs queued, retrying or running, of `counts` (jobs by state): 0 means the queue is idle."""
    return sum(counts.get(state, 0) for state in ACTIVE_STATES)


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
    body_sha256: str | None = None
    body_path: str | None = None
    etag: str | None = None
    last_modified: str | None = None


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
    # state `queued`: the job goes on at this hop (`hops` made), queued under the hop's host
    # (a redirect to a host another daemon holds: that daemon sends the next request)
    moved_to: Target | None = None
    hops: int = 0

    @property
    def final(self) -> bool:
        """Whether the job ends here (its result is kept)."""
        return self.state in FINAL_STATES

    @property
    def keeps_validators(self) -> bool:
        """Whether a later fetch of the job's URL may be conditional on this answer: done, with
        an ETag or a Last-Modified (kept only where the answer was for the URL itself)."""
        return self.state is JobState.DONE and bool(self.etag or self.last_modified)


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
