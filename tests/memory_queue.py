"""A `JobQueue` in memory, for in-process tests of the service's logic only (the real backends
are tested against real databases). It can be taken down: while `down` is set every call
raises `StoreUnavailable`, as SQLite's locked or full database does, and changes nothing."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from fetcher.batch import Batch, Pruned
from fetcher.errors import IdempotencyKeyReused, StoreUnavailable
from fetcher.jobqueue import Delivery, Once, Redrive, Settled
from fetcher.model import (
    ACTIVE_STATES,
    CANCELLED,
    HostLease,
    HostRate,
    HostWalk,
    Job,
    JobRequest,
    JobState,
    Outcome,
    Submitted,
    Verdict,
)
from fetcher.urls import stored_target


@dataclass
class Row:
    id: int
    request: JobRequest
    state: JobState = JobState.QUEUED
    attempts: int = 0
    next_attempt_at: float | None = None
    owner: str | None = None
    cancel: bool = False

    @property
    def url(self) -> str:
        return self.request.target.url

    @property
    def host(self) -> str:
        return self.request.target.host_key


class MemoryQueue:
    owner = "memory-daemon"

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.rows: dict[int, Row] = {}
        self.results: dict[int, Outcome] = {}
        self.counters: dict[str, Counter[str]] = {}
        self.pauses: dict[str, float] = {}
        self.robots: dict[str, Verdict] = {}
        self.down: str | None = None  # the reason every call fails, while set
        self.calls: Counter[str] = Counter()
        self.bug_in: str | None = None  # an operation that raises a plain bug
        self._wall = wall
        self._restored = False
        self.keys: dict[str, tuple[str, str]] = {}  # Idempotency-Key → (request hash, answer)

    def _in(self, state: JobState) -> list[Row]:
        return [row for row in self.rows.values() if row.state is state]

    async def _enter(self, operation: str) -> None:
        """Every call yields to the loop once, as a real backend's I/O does."""
        await asyncio.sleep(0)
        self.calls[operation] += 1
        if self.bug_in == operation:
            raise RuntimeError(f"a bug in {operation}")
        if self.down is not None:
            raise StoreUnavailable(operation, self.down)

    async def close(self) -> None:
        return None

    def about(self) -> dict[str, str]:
        return {"backend": "memory"}

    async def submit(self, jobs: Sequence[JobRequest]) -> list[Submitted]:
        await self._enter("submit")
        active = {
            row.request.fingerprint: row.id
            for row in self.rows.values()
            if row.state in ACTIVE_STATES
        }
        answers = []
        for job in jobs:
            if job.fingerprint in active:
                answers.append(Submitted(active[job.fingerprint], True))
                continue
            job_id = len(self.rows) + 1
            row = self.rows[job_id] = Row(job_id, job)
            if job.not_before is not None and job.not_before > self._wall():
                row.state, row.next_attempt_at = JobState.RETRYING, job.not_before
            active[job.fingerprint] = job_id
            answers.append(Submitted(job_id, False))
        return answers

    async def cancel(self, ids: Sequence[int]) -> dict[int, JobState]:
        await self._enter("cancel")
        before = {}
        for job_id in ids:
            row = self.rows.get(job_id)
            if row is None:
                continue
            before[job_id] = row.state
            if row.state in (JobState.QUEUED, JobState.RETRYING):
                row.state = JobState.CANCELLED
                self.results[job_id] = Outcome(
                    job_id, JobState.CANCELLED, row.attempts, error=CANCELLED
                )
            elif row.state is JobState.RUNNING:
                row.cancel = True
        return before

    async def hosts_with_queued(self, after: str, limit: int) -> HostWalk:
        await self._enter("hosts_with_queued")
        hosts = sorted(
            {r.host for r in self.rows.values() if r.state is JobState.QUEUED and r.host > after}
        )
        return HostWalk(hosts[:limit], hosts[limit - 1] if len(hosts) > limit else None)

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        await self._enter("claim")
        jobs = []
        for host, n in wants:
            queued = sorted(
                (r for r in self.rows.values() if r.state is JobState.QUEUED and r.host == host),
                key=lambda r: (-r.request.priority, r.id),
            )
            for row in queued[:n]:
                row.state, row.owner = JobState.RUNNING, self.owner
                jobs.append(_claimed(row))
        return jobs

    async def promote_due(self) -> int:
        await self._enter("promote_due")
        now, n = self._wall(), 0
        for row in self.rows.values():
            if row.state is JobState.RETRYING and (row.next_attempt_at or 0) <= now:
                row.state, row.next_attempt_at = JobState.QUEUED, None
                n += 1
        return n

    async def register(self) -> int:
        await self._enter("register")
        return 0

    async def heartbeat(self, lease_s: float) -> int:
        await self._enter("heartbeat")
        return 0

    async def release_all(self, rates: Mapping[str, HostRate]) -> int:
        await self._enter("release_all")
        now = self._wall()
        for host, rate in rates.items():
            if rate.paused_until > now:
                self.pauses[host] = max(rate.paused_until, self.pauses.get(host, 0.0))
        held = [
            r for r in self.rows.values() if r.state is JobState.RUNNING and r.owner == self.owner
        ]
        for row in held:
            row.state, row.owner = JobState.QUEUED, None
        return len(held)

    def lease_end(self, host: str) -> float:
        return math.inf  # one daemon, as on SQLite

    def held_hosts(self) -> Collection[str]:
        return ()

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        """As on SQLite: the pauses of the last run, taken up at the first turn."""
        await self._enter("turn_hosts")
        if self._restored:
            return []
        self._restored = True
        now = self._wall()
        return [HostLease(h, HostRate(paused_until=u)) for h, u in self.pauses.items() if u > now]

    async def unregister(self) -> None:
        await self._enter("unregister")

    async def record(self, batch: Batch) -> None:
        await self._enter("record")
        cancelled = {o.job_id for o in batch.outcomes if self.rows[o.job_id].cancel}
        batch = batch.cancelling(cancelled)
        for verdict in batch.robots:
            self.robots[verdict.origin] = verdict
        for outcome in batch.outcomes:
            row = self.rows[outcome.job_id]
            if row.state is not JobState.RUNNING or row.owner != self.owner:
                continue
            row.state, row.attempts, row.owner = outcome.state, outcome.attempts, None
            row.next_attempt_at = outcome.next_attempt_at
            if outcome.next_run_at is not None:  # a recurring job: due again
                row.state, row.attempts = JobState.RETRYING, 0
                row.next_attempt_at = outcome.next_run_at
            if outcome.final:
                self.results[outcome.job_id] = outcome
        for e in batch.exchanges:
            counter = self.counters.setdefault(e.host, Counter())
            if e.disallowed:
                counter["robots_disallowed"] += 1
                continue
            counter["requests"] += 1
            counter["errors" if e.status is None else f"status_{e.status // 100}xx"] += 1
        for host, until in batch.pauses.items():
            self.pauses[host] = max(until, self.pauses.get(host, 0.0))

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        await self._enter("cached_robots")
        return [self.robots[o] for o in origins if o in self.robots]

    async def counts(self) -> dict[str, int]:
        await self._enter("counts")
        counts = Counter(row.state.value for row in self.rows.values())
        return {state.value: counts[state.value] for state in JobState}

    async def prune(self, before: float, limit: int) -> Pruned:
        await self._enter("prune")
        return Pruned(0, 0, [])

    async def waiting_runs(self) -> int:
        await self._enter("waiting_runs")
        return sum(1 for row in self._in(JobState.RETRYING) if row.request.recurrence is not None)

    async def redrive(self, which: Redrive, *, dry_run: bool = False) -> int:
        await self._enter("redrive")
        chosen = [row for row in self._in(JobState(which.state))]
        if not dry_run:
            for row in chosen:
                row.state, row.attempts = JobState.QUEUED, 0
        return len(chosen)

    async def expire(self, now: float) -> int:
        await self._enter("expire")
        return 0

    async def submit_once(self, jobs: Sequence[JobRequest], once: Once) -> tuple[str, bool]:
        await self._enter("submit")
        if once.key in self.keys:
            sha, answer = self.keys[once.key]
            if sha != once.request_sha256:
                raise IdempotencyKeyReused(once.key)
            return answer, True
        answer = once.answer(await self.submit(jobs))
        self.keys[once.key] = (once.request_sha256, answer)
        return answer, False

    async def claim_webhooks(self, limit: int, lease_s: float) -> list[Delivery]:
        await self._enter("claim_webhooks")
        return []  # webhooks are tested on the real backends

    async def settle_webhooks(self, settled: Sequence[Settled]) -> None:
        await self._enter("settle_webhooks")

    async def watch_results(self, wake: Callable[[], None]) -> None:
        return None

    def states(self) -> Counter[str]:
        return Counter(row.state.value for row in self.rows.values())


def _claimed(row: Row) -> Job:
    request = row.request
    return Job(
        row.id, row.url, row.host, row.attempts, stored_target(row.url, row.host),
        method=request.method, headers=request.headers, body=request.body,
        priority=request.priority, max_attempts=request.max_attempts,
        timeout_s=request.timeout_s, retry=request.retry, first_method=request.method,
        recurrence=request.recurrence,
    )  # fmt: skip
