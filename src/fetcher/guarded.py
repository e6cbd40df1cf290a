"""The queue as the daemon's tasks use it: every call waits out a store that is away.

`GuardedQueue` is a `JobQueue` whose async calls go through `StoreHealth.call`: a
`StoreUnavailable` is logged once per episode and the call is tried again with capped backoff,
until it succeeds or the `give_up` event is set (then it raises). The retry is written here, at
the definition, once (as stamina's `@retry` is), not at each of the daemon's call sites.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from fetcher.batch import Batch, Pruned
from fetcher.jobqueue import Delivery, JobQueue, Once, Redrive, Settled
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
from fetcher.supervisor import StoreHealth

__all__ = ["GuardedQueue"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _retried(
    method: Callable[Concatenate[GuardedQueue, _P], Awaitable[_T]],
) -> Callable[Concatenate[GuardedQueue, _P], Awaitable[_T]]:
    """The call, tried again while the store is away (named after the method in the logs)."""
    operation = method.__name__

    async def call(self: GuardedQueue, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self.health.call(
            operation, lambda: method(self, *args, **kwargs), give_up=self.give_up
        )

    return call


class GuardedQueue:
    """`queue`, its calls retried while the store is away, until `give_up` is set."""

    def __init__(self, queue: JobQueue, health: StoreHealth, give_up: asyncio.Event) -> None:
        self.queue = queue
        self.health = health
        self.give_up = give_up

    def until(self, give_up: asyncio.Event) -> GuardedQueue:
        """The same queue, given up on when `give_up` is set instead (a final commit's
        deadline)."""
        return GuardedQueue(self.queue, self.health, give_up)

    @property
    def owner(self) -> str:
        return self.queue.owner

    async def close(self) -> None:
        await self.queue.close()

    def about(self) -> dict[str, str]:
        return self.queue.about()

    def lease_end(self, host: str) -> float:
        return self.queue.lease_end(host)

    def held_hosts(self) -> Collection[str]:
        return self.queue.held_hosts()

    @_retried
    async def submit(self, jobs: Sequence[JobRequest]) -> list[Submitted]:
        return await self.queue.submit(jobs)

    @_retried
    async def cancel(self, ids: Sequence[int]) -> dict[int, JobState]:
        return await self.queue.cancel(ids)

    @_retried
    async def hosts_with_queued(self, after: str, limit: int) -> HostWalk:
        return await self.queue.hosts_with_queued(after, limit)

    @_retried
    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        return await self.queue.claim(wants, lease_s)

    @_retried
    async def promote_due(self) -> int:
        return await self.queue.promote_due()

    @_retried
    async def waiting_runs(self) -> int:
        return await self.queue.waiting_runs()

    @_retried
    async def redrive(self, which: Redrive, *, dry_run: bool = False) -> int:
        return await self.queue.redrive(which, dry_run=dry_run)

    @_retried
    async def register(self) -> int:
        return await self.queue.register()

    @_retried
    async def heartbeat(self, lease_s: float) -> int:
        return await self.queue.heartbeat(lease_s)

    @_retried
    async def release_all(self, rates: Mapping[str, HostRate]) -> int:
        return await self.queue.release_all(rates)

    @_retried
    async def unregister(self) -> None:
        await self.queue.unregister()

    @_retried
    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        return await self.queue.turn_hosts(release, want)

    @_retried
    async def record(self, batch: Batch) -> None:
        await self.queue.record(batch)

    @_retried
    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        return await self.queue.cached_robots(origins)

    @_retried
    async def counts(self) -> dict[str, int]:
        return await self.queue.counts()

    @_retried
    async def prune(self, before: float, limit: int) -> Pruned:
        return await self.queue.prune(before, limit)

    @_retried
    async def expire(self, now: float) -> int:
        return await self.queue.expire(now)

    @_retried
    async def submit_once(self, jobs: Sequence[JobRequest], once: Once) -> tuple[str, bool]:
        return await self.queue.submit_once(jobs, once)

    @_retried
    async def claim_webhooks(self, limit: int, lease_s: float) -> list[Delivery]:
        return await self.queue.claim_webhooks(limit, lease_s)

    @_retried
    async def settle_webhooks(self, settled: Sequence[Settled]) -> None:
        await self.queue.settle_webhooks(settled)

    async def watch_results(self, wake: Callable[[], None]) -> None:
        await self.queue.watch_results(wake)
