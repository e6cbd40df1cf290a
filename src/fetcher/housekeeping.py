"""The daemon's periodic chores, one task per concern, each under the supervisor:

retries  every 0.25 s  jobs whose retry time came go back to `queued` (and wake the feeder)
leases   lease/4       renew this daemon's leases, take back expired ones, forget idle meters
status   5 s           systemd's STATUS= line
metrics  1 s           the queue gauge (only with FETCHER_METRICS_ADDR)
prune    10 min        FETCHER_RETENTION_DAYS
warc     ≤ 1 min       close the WARC file past FETCHER_WARC_MAX_AGE, also when idle
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fetcher import archive
from fetcher.bodies import BodyStore
from fetcher.errors import StoreUnavailable
from fetcher.guarded import GuardedQueue
from fetcher.log import get_logger
from fetcher.supervisor import Supervisor, wait_set
from fetcher.systemd import Notifier

if TYPE_CHECKING:
    from fetcher.metrics import Metrics

__all__ = ["Housekeeping"]

_log = get_logger("fetcher.housekeeping")
RETRIES_EVERY_S = 0.25
STATUS_EVERY_S = 5.0
METRICS_EVERY_S = 1.0
PRUNE_EVERY_S = 600.0
PRUNE_BATCH = 5000  # results a prune transaction deletes at most: fetching never waits long


class Housekeeping:
    def __init__(
        self,
        queue: GuardedQueue,
        notifier: Notifier,
        *,
        lease_s: float,
        retention_days: float,
        bodies: BodyStore | None,
        metrics: Metrics | None,
        in_flight: Callable[[], int],
        on_due: Callable[[], None],
        forget_idle: Callable[[], None],
        wall: Callable[[], float],
    ) -> None:
        self._queue = queue
        self._notifier = notifier
        self._lease_s = lease_s
        self._retention_days = retention_days
        self._bodies = bodies
        self._metrics = metrics
        self._in_flight = in_flight
        self._on_due = on_due
        self._forget_idle = forget_idle
        self._wall = wall

    def start(self, supervisor: Supervisor, stopping: asyncio.Event) -> None:
        chores: list[tuple[str, float, Callable[[], Awaitable[None]], bool]] = [
            ("retries", RETRIES_EVERY_S, self.promote_due, False),
            ("leases", self._lease_s / 4, self.renew_leases, False),
            ("status", STATUS_EVERY_S, self.report_status, False),
        ]
        if self._retention_days > 0:  # a first prune at start: a restart may find much to do
            chores.append(("prune", PRUNE_EVERY_S, self.prune, True))
        chores.append(("expire", PRUNE_EVERY_S, self.expire, False))
        if self._bodies is not None:
            chores.append(("warc", self._bodies.age_check_s, self.close_old_warc, False))
        if self._metrics is not None:
            chores.append(("metrics", METRICS_EVERY_S, self.gauge_queue, False))
        for name, every_s, chore, first_now in chores:
            supervisor.start(name, _every(every_s, chore, stopping, first_now=first_now))

    async def promote_due(self) -> None:
        if await self._queue.promote_due():
            self._on_due()

    async def renew_leases(self) -> None:
        reclaimed = await self._queue.heartbeat(self._lease_s)
        if reclaimed:
            _log.warning("jobs.reclaimed", jobs=reclaimed, why="lease expired")
        self._forget_idle()

    async def report_status(self) -> None:
        health = self._queue.health
        if health.down is not None:  # said when it went down; said again here, with its age
            self._notifier.notify(STATUS=health.status_line())
            return
        self._notifier.notify(STATUS=await self.status_line())

    async def status_line(self) -> str:
        counts = await self._queue.counts()
        return (
            f"in flight {self._in_flight()}, queued {counts['queued']},"
            f" retrying {counts['retrying']}, done {counts['done']}, failed {counts['failed']}"
        )

    async def gauge_queue(self) -> None:
        assert self._metrics is not None
        self._metrics.queue(await self._queue.counts())

    async def close_old_warc(self) -> None:
        assert self._bodies is not None
        self._bodies.close_if_old()

    async def expire(self) -> None:
        """Idempotency-Keys past their day, webhook deliveries that ended a week ago."""
        gone = await self._queue.expire(self._wall())
        if gone:
            _log.info("retention.expired", rows=gone)

    async def prune(self) -> None:
        """FETCHER_RETENTION_DAYS: old results, finished jobs, minute rows and the bodies no
        result names any more go, a batch per transaction; cumulative counters stay."""
        days = self._retention_days
        before = self._wall() - days * 86400
        deleted, orphans = 0, []
        while True:
            pruned = await self._queue.prune(before, PRUNE_BATCH)
            deleted += pruned.rows
            orphans.extend(pruned.orphans)
            if pruned.results < PRUNE_BATCH:
                break
            await asyncio.sleep(0)
        files: list[str] = []
        if self._bodies is not None:
            files = await asyncio.to_thread(_remove_bodies, self._bodies.root, orphans, before)
        if deleted or orphans or files:
            _log.info(
                "retention.pruned", rows=deleted, bodies=len(orphans), warc_files=len(files),
                days=days,
            )  # fmt: skip


def _remove_bodies(root: Path, orphans: list[str], before: float) -> list[str]:
    """Whole WARC files past retention; bodies of the layout before WARC no result names."""
    for sha in orphans:
        (root / sha[:2] / sha).unlink(missing_ok=True)
    return archive.remove_expired(root, before)


async def _every(
    seconds: float,
    chore: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    first_now: bool = False,
) -> None:
    """`chore` every `seconds` until `stopping` is set (a store that is away then ends it)."""
    wait_s = 0.0 if first_now else seconds
    while True:
        await wait_set(stopping, wait_s)
        if stopping.is_set():
            return
        try:
            await chore()
        except StoreUnavailable:
            if stopping.is_set():
                return
            raise
        wait_s = seconds
