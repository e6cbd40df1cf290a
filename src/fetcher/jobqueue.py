"""The queue interface: what the daemon and the commands ask of a queue, whatever holds it.

A leaf, as httpx's `_transports/base.py` is: it names the contract and chooses no backend
(`fetcher.backends` does). `JobQueue` is the daemon's and `fetcher submit`'s side (async);
`QueueReader` is the read side behind `stats`, `status` and `results` (plain calls: a command
that reads answers in tens of milliseconds, with no event loop to start). SQLite
(`fetcher.sqlite`) is the embedded default; PostgreSQL (`fetcher.postgres`) lets several daemons
share one queue, each host leased to one daemon at a time; the tests add one in memory.

Host leases: with one daemon (SQLite) the daemon holds every host on an endless lease
(`lease_end` is `inf`); its hosts' schedules outlive it the same way as on PostgreSQL: handed
back with `release_all`, and taken up again by the next start's first `turn_hosts`. With several,
a daemon starts a request to a host only if the request will end before its lease on the host
does, and the host's rate schedule goes with the host from daemon to daemon (`HostRate`).

The rules every backend follows (final states, validators, idle, the dead-daemon rule, the
counters' arithmetic, the steps of a batch commit) are written once, in `fetcher.model`,
`fetcher.daemons` and `fetcher.batch`; a backend brings its SQL.

A backend raises `StoreUnavailable` for trouble that passes (locked, full, away) and lets
anything else through as the bug it is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, TypedDict

from fetcher.batch import Batch, Pruned
from fetcher.model import (
    HostLease,
    HostRate,
    HostWalk,
    Job,
    JobRequest,
    JobState,
    Submitted,
    Verdict,
)

__all__ = [
    "KEY_TTL_S", "Delivery", "HostStatsRow", "JobQueue", "JobRow", "MinuteRow", "Once",
    "QueueReader", "Redrive", "ResultRow", "Settled", "WebhookRow",
]  # fmt: skip

KEY_TTL_S = 86_400.0  # an Idempotency-Key answers the same for a day


class JobQueue(Protocol):
    """The durable queue with its counters, as one daemon (identified by `owner`) uses it."""

    @property
    def owner(self) -> str: ...

    async def close(self) -> None: ...

    def about(self) -> dict[str, str]:
        """What the daemon logs at start: the backend, its version, where it is."""
        ...

    # -- submission, cancellation
    async def submit(self, jobs: Sequence[JobRequest]) -> list[Submitted]:
        """Queue `jobs` in one transaction (`fetcher.intake`); for each, in order, its new id
        or the id of the same request (fingerprint) already queued, retrying or running."""
        ...

    async def cancel(self, ids: Sequence[int]) -> dict[int, JobState]:
        """Cancel jobs: a queued or retrying one ends `cancelled` at once (its result kept), a
        running one ends after its current request and is not retried. The state each known
        job was in before (a final one is left as it was)."""
        ...

    # -- claims
    async def hosts_with_queued(self, after: str, limit: int) -> HostWalk:
        """Up to `limit` host keys with queued jobs (that this daemon may claim), in key order
        after `after`, and whether more follow."""
        ...

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Up to n queued jobs for each (host, n), oldest first, leased to this daemon; each
        with the validators its URL's last done fetch left (for a conditional GET)."""
        ...

    async def promote_due(self) -> int:
        """Jobs whose retry time (or next run) has come go back to `queued`; how many. Runs
        of recurring jobs overdue past their interval (the daemons were away) are
        spread over their jitter window first."""
        ...

    async def waiting_runs(self) -> int:
        """Recurring jobs waiting for a run (`retrying`): what `run --drain` does not wait
        for."""
        ...

    async def redrive(self, which: Redrive, *, dry_run: bool = False) -> int:
        """Queue the finished jobs `which` selects again, as a new run each (their results
        kept); one of a fingerprint, and none whose request is already active. How many (with
        `dry_run`, how many it would)."""
        ...

    # -- daemons
    async def register(self) -> int:
        """Announce this daemon; take back the jobs of dead ones. How many were taken back."""
        ...

    async def heartbeat(self, lease_s: float) -> int:
        """Extend this daemon's leases; take back expired leases of others. How many."""
        ...

    async def release_all(self, rates: Mapping[str, HostRate]) -> int:
        """Every job this daemon still holds goes back to `queued`, and every host it holds is
        handed back with its schedule in `rates` (host → schedule; hosts it does not hold are
        ignored); how many jobs."""
        ...

    async def unregister(self) -> None: ...

    # -- host leases
    def lease_end(self, host: str) -> float:
        """When, on this process's monotonic clock, this daemon's lease on `host` ends: a
        request to it must have ended by then. `inf`: an endless lease (one daemon); `-inf`:
        this daemon does not hold the host (or lost it)."""
        ...

    def held_hosts(self) -> Collection[str]:
        """The hosts this daemon holds under a lease that it hands back when they are idle
        (none where the lease is endless)."""
        ...

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        """Hand back the hosts in `release` that have nothing queued (keeping their schedule),
        then acquire up to `want` hosts, each with the schedule its last holder left: with
        several daemons, hosts with queued jobs that no live daemon holds; with one, the hosts
        whose schedule outlived the last run (a pause still on)."""
        ...

    # -- outcomes, counters, pauses
    async def record(self, batch: Batch) -> None:
        """One transaction (`fetcher.batch.write`): the outcomes (and results of final ones)
        of jobs this daemon still holds, with the validators of done ones; the requests to
        the per-host counters; host pauses; robots.txt verdicts."""
        ...

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        """The stored robots.txt verdicts of `origins` (those it has)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Jobs by state: queued, retrying, running, done, failed (`model.active_jobs` of it is
        0 when the queue is idle)."""
        ...

    async def prune(self, before: float, limit: int) -> Pruned:
        """One transaction of retention: up to `limit` results finished before `before` (unix
        time), their finished jobs, and the minute rows before it."""
        ...

    # -- the service: idempotent submits, the webhook outbox, the feed's wake-ups
    async def submit_once(self, jobs: Sequence[JobRequest], once: Once) -> tuple[str, bool]:
        """`submit` under an Idempotency-Key, in one transaction: the answer the key gave
        within `KEY_TTL_S` and True (nothing queued), or `once.answer` of this submit, kept
        with the key, and False. Raises `IdempotencyKeyReused` for the same key with another
        request."""
        ...

    async def claim_webhooks(self, limit: int, lease_s: float) -> list[Delivery]:
        """Up to `limit` deliveries that are due, leased to this daemon for `lease_s`, each
        with the result it tells of; one to a URL that answered 410 ends `failed` instead."""
        ...

    async def settle_webhooks(self, settled: Sequence[Settled]) -> None:
        """What became of deliveries: delivered, due again later, or given up; a URL that
        answered 410 is remembered, and its pending deliveries fail."""
        ...

    async def expire(self, now: float) -> int:
        """Forget Idempotency-Keys older than `KEY_TTL_S` and deliveries that ended more than
        a week ago; how many rows."""
        ...

    async def watch_results(self, wake: Callable[[], None]) -> None:
        """Call `wake` whenever another process commits results, until cancelled; a backend
        with no way to tell returns at once (a long poll then reads again each second)."""
        ...


class HostStatsRow(TypedDict):
    """A row of the `host_stats` view."""

    host: str
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    errors: int
    bytes: int
    latency_avg_ms: float | None
    latency_max_ms: float | None
    last_status: int | None
    last_request_at: str | None
    robots_disallowed: int


class ResultRow(TypedDict):
    """A finished run of a job, as `fetcher results` prints it (`finished_at` in ISO 8601;
    `id` and `job_id` are the job's, `job_id` its older name; `cursor` its place in commit
    order, the API feed's)."""

    id: int
    job_id: int
    run: int
    cursor: int
    url: str
    method: str
    metadata: dict[str, object] | None
    final_url: str | None
    host: str
    state: str
    status: int | None
    bytes: int
    error: str | None
    attempts: int
    latency_ms: float | None
    body_sha256: str | None
    body_path: str | None
    changed: bool | None  # the content differs from the job's last done run (None: not done)
    finished_at: str


class JobRow(TypedDict):
    """A job as the API shows it: its request (a secret header's value as `***`; the body by
    its size), its state, and its latest result."""

    id: int
    url: str
    method: str
    host: str
    headers: dict[str, str]
    body_bytes: int
    priority: int
    max_attempts: int | None
    timeout: float | None
    retry: bool
    metadata: dict[str, object] | None
    webhook: str | None
    every: float | None  # the interval now (it moves when adaptive)
    adaptive: bool
    min_every: float | None
    max_every: float | None
    notify: str  # all, changed
    state: str
    attempts: int
    run: int
    next_attempt_at: str | None
    created_at: str
    updated_at: str
    result: ResultRow | None


class WebhookRow(TypedDict):
    """One webhook delivery (`fetcher webhooks`): an event of a job's run, to one URL."""

    id: int
    event_id: str
    job_id: int
    run: int
    url: str
    state: str  # pending, delivered, failed
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: str | None
    created_at: str
    ended_at: str | None


class Redrive(NamedTuple):
    """Which finished jobs `fetcher retry` (and `POST /v1/jobs:retry`) queues again: in
    `state`, their host matching the glob `host`, their last run finished since `since` (unix
    time), its error holding `error`."""

    state: str = "failed"
    host: str | None = None
    since: float | None = None
    error: str | None = None


class Once(NamedTuple):
    """A submit under an Idempotency-Key: `answer` renders what the key answers (kept with it,
    in the submit's transaction)."""

    key: str
    request_sha256: str
    answer: Callable[[list[Submitted]], str]


class Delivery(NamedTuple):
    """A webhook delivery leased to this daemon, with the result it tells of (None if that
    was pruned meanwhile)."""

    id: int
    event_id: str
    url: str
    attempts: int  # made before this one
    created_at: float
    result: ResultRow | None


class Settled(NamedTuple):
    """What became of a delivery attempt: `state` delivered, pending (again at
    `next_attempt_at`) or failed (given up); `gone`: the URL answered 410."""

    id: int
    url: str
    state: str
    status: int | None
    error: str | None
    next_attempt_at: float | None = None
    gone: bool = False


class MinuteRow(TypedDict):
    """One host's requests in one minute (`at`: its first second, unix time)."""

    host: str
    at: int
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    errors: int
    bytes: int
    latency_avg_ms: float | None
    latency_max_ms: float | None


class QueueReader(Protocol):
    """The read side: rows with the public views' column names."""

    def close(self) -> None: ...

    def host_stats(self) -> list[HostStatsRow]:
        """Every row of `host_stats`."""
        ...

    def queue_counts(self) -> dict[str, int]:
        """Jobs by state (the `queue` view)."""
        ...

    def requests_by_minute(self, since_minute: int) -> dict[int, int]:
        """Requests per Unix minute, over every host, from `since_minute` on."""
        ...

    def oldest_queued_at(self) -> float | None:
        """Unix time the oldest queued job was queued."""
        ...

    def results(
        self, state: str | None, since: float | None, job_id: int | None = None
    ) -> Iterator[ResultRow]:
        """Finished jobs, oldest first (or the result of job `job_id`)."""
        ...

    def recurring(self) -> tuple[int, float | None]:
        """How many jobs recur (not ended), and when (unix time) the next waiting run is due."""
        ...

    def feed(
        self, after: int, limit: int, state: str | None = None, host: str | None = None
    ) -> list[ResultRow]:
        """Up to `limit` results after cursor `after`, in commit order (`host`: a glob)."""
        ...

    def job(self, job_id: int) -> JobRow | None: ...

    def body(self, job_id: int) -> tuple[str | None, str | None] | None:
        """(body_path, content type) of the job's latest result; None without a result."""
        ...

    def webhooks(self, states: Sequence[str], limit: int) -> list[WebhookRow]:
        """Webhook deliveries in these states, oldest first."""
        ...

    def minute_rows(self, since_minute: int) -> list[MinuteRow]:
        """Per host and minute, by host then minute."""
        ...

    def robots(self, origins: Sequence[str]) -> list[Verdict]:
        """The cached robots.txt verdicts of `origins` (those there are)."""
        ...
