"""Recording: group commit of outcomes, requests, host pauses and robots.txt verdicts.

Whatever settled since the last commit goes in the next one, so batches grow with the load and
an outcome waits at most one commit and a short gap. Until its batch commits, everything stays
here in memory: a store that is away for a while delays the commit, it never drops a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from fetcher.errors import StoreUnavailable
from fetcher.jobqueue import JobQueue
from fetcher.model import Exchange, Outcome
from fetcher.robots import Verdict
from fetcher.supervisor import StoreHealth, wait_set

if TYPE_CHECKING:
    from fetcher.metrics import Metrics

__all__ = ["Recorder"]

_IDLE_POLL_S = 0.5
_COMMIT_GAP_S = 0.02  # at most ~50 commits/s: each is several hand-offs to the store's thread


class Recorder:
    """The batch in the making, and the task that commits it."""

    def __init__(
        self, queue: JobQueue, health: StoreHealth, metrics: Metrics | None = None
    ) -> None:
        self._queue = queue
        self._health = health
        self._metrics = metrics
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
                await self.flush(give_up=stopping)
            await asyncio.sleep(_COMMIT_GAP_S)

    async def flush(self, *, give_up: asyncio.Event | None = None) -> None:
        """Commit everything held now, waiting while the store is away. If `give_up` is set
        first, the batch goes back where it was and `StoreUnavailable` is raised."""
        if not (self._outcomes or self._exchanges or self._pauses or self._robots):
            return
        outcomes, self._outcomes = self._outcomes, []
        exchanges, self._exchanges = self._exchanges, []
        pauses, self._pauses = self._pauses, {}
        robots, self._robots = self._robots, {}
        try:
            await self._health.call(
                "record",
                lambda: self._queue.record(outcomes, exchanges, pauses, list(robots.values())),
                give_up=give_up,
            )
        except BaseException:
            self._outcomes[:0] = outcomes
            self._exchanges[:0] = exchanges
            for host, until in pauses.items():
                self.pause(host, until)
            self._robots = {**robots, **self._robots}
            raise
        if self._metrics is not None:
            self._metrics.count(exchanges)
