"""Recording: group commit of outcomes, requests, host pauses and robots.txt verdicts.

Whatever settled since the last commit goes in the next one, so batches grow with the load and
an outcome waits at most one commit and a short gap. Kept bodies are made durable first (one
fdatasync a commit): a committed result never points at a record a power loss could take; a
sync that fails is not a store outage, and stops the daemon (its uncommitted jobs are fetched
again after the restart, as after a crash). Until its batch commits, everything stays
here in memory: a store that is away for a while delays the commit, it never drops a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fetcher.batch import Batch
from fetcher.errors import StoreUnavailable
from fetcher.guarded import GuardedQueue
from fetcher.model import Exchange, Outcome, Verdict
from fetcher.supervisor import wait_set

if TYPE_CHECKING:
    from fetcher.metrics import Metrics

__all__ = ["Recorder"]

_IDLE_POLL_S = 0.5
_COMMIT_GAP_S = 0.02  # at most ~50 commits/s: each is several hand-offs to the store's thread


class Recorder:
    """The batch in the making, and the task that commits it."""

    def __init__(
        self,
        queue: GuardedQueue,
        metrics: Metrics | None = None,
        told: Callable[[], None] | None = None,
        durable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._queue = queue
        self._durable = durable  # the bodies the batch points at are on the disk
        self._metrics = metrics
        self._told = told  # results committed: the API's long polls and the webhooks look now
        self._outcomes: list[Outcome] = []
        # every request as it ends, hops of unfinished redirect chains included: committed in
        # the next batch, so the counters never miss a request the host saw
        self._exchanges: list[Exchange] = []
        self._pauses: dict[str, float] = {}  # host → unix time its pause ends
        self._robots: dict[str, Verdict] = {}  # origin → its latest robots.txt verdict
        self._due = asyncio.Event()

    def requests(self, exchanges: list[Exchange]) -> None:
        self._exchanges.extend(exchanges)

    def outcome(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._due.set()

    def pause(self, host: str, until: float) -> None:
        """A host's pause (to unix time `until`) goes to the database with the next batch, so a
        restart keeps it. Of two pauses for a host, the longer wins."""
        self._pauses[host] = max(until, self._pauses.get(host, 0.0))

    def robots(self, verdict: Verdict) -> None:
        """An origin's robots.txt verdict goes to the database with the next batch."""
        self._robots[verdict.origin] = verdict
        self._due.set()

    def soon(self) -> None:
        """Commit what there is without waiting for an outcome (a redirect hop ended)."""
        self._due.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Commit batches until `stopping` is set; the last batch is the caller's (`flush`)."""
        while not stopping.is_set():
            await wait_set(self._due, _IDLE_POLL_S)
            self._due.clear()
            with contextlib.suppress(StoreUnavailable):  # only once stopping: flush keeps it
                await self.flush()
            await asyncio.sleep(_COMMIT_GAP_S)

    async def flush(self, via: GuardedQueue | None = None) -> None:
        """Commit everything held now (through `via`, or the recorder's queue), waiting while
        the store is away. If the queue gives up first, the batch goes back where it was and
        `StoreUnavailable` is raised."""
        batch = Batch(self._outcomes, self._exchanges, self._pauses, list(self._robots.values()))
        if not batch:
            return
        self._outcomes, self._exchanges, self._pauses, self._robots = [], [], {}, {}
        try:
            if self._durable is not None and batch.outcomes:
                await self._durable()
            await (via or self._queue).record(batch)
        except BaseException:
            self._outcomes[:0] = batch.outcomes
            self._exchanges[:0] = batch.exchanges
            for host, until in batch.pauses.items():
                self.pause(host, until)
            self._robots = {**{v.origin: v for v in batch.robots}, **self._robots}
            raise
        if self._metrics is not None:
            self._metrics.count(batch.exchanges)
        if self._told is not None and batch.finals:
            self._told()
