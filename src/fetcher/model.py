"""The records that travel between the queue, the scheduler, the fetch step and the store."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fetcher.errors import Refused
from fetcher.urls import Target

__all__ = [
    "DISALLOWED", "REDIRECT_STATUSES", "Exchange", "Hop", "Job", "JobState", "Outcome",
    "Validators",
]  # fmt: skip

DISALLOWED = "disallowed by robots.txt"  # the reason of a job its site's robots.txt forbids

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})  # followed when Location is usable


class JobState(StrEnum):
    QUEUED = "queued"
    RETRYING = "retrying"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


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
