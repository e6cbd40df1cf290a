"""A batch commit: what the recorder gathered, and the steps every backend writes it in.

The recorder builds one `Batch` per commit; a backend opens its transaction (PostgreSQL first
keeps only what its host leases allow: `Batch.only`) and calls `write` with its `Tables`, the
SQL of each table a batch writes, one short method each. The order and the rules (which outcomes
leave a result, which keep validators, how the counters are read, added up and written back)
are here, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from fetcher.counters import Tally, tally
from fetcher.model import CANCELLED, Exchange, JobState, Outcome, Verdict

__all__ = ["Batch", "Pruned", "Tables", "count", "write"]


@dataclass(slots=True)
class Batch:
    """Outcomes, requests (`exchanges`), host pauses (host → unix time the pause ends) and
    robots.txt verdicts (the latest per origin) settled since the last commit."""

    outcomes: Sequence[Outcome] = ()
    exchanges: Sequence[Exchange] = ()
    pauses: Mapping[str, float] = field(default_factory=dict)
    robots: Sequence[Verdict] = ()
    finals: list[Outcome] = field(init=False)  # the outcomes that leave a result
    validated: list[Outcome] = field(init=False)  # … and keep validators for a conditional GET

    def __post_init__(self) -> None:
        self.finals = [o for o in self.outcomes if o.final]
        self.validated = [o for o in self.finals if o.keeps_validators]

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.exchanges or self.pauses or self.robots)

    @property
    def hosts(self) -> set[str]:
        """The hosts whose counters or pauses the batch changes."""
        return {e.host for e in self.exchanges} | set(self.pauses)

    def cancelling(self, job_ids: set[int]) -> Batch:
        """The batch with the jobs of `job_ids`, cancelled while they ran, ending `cancelled`
        instead of being retried (or moved on): their current request was their last. A
        recurring job's run that ended keeps its result and is not scheduled again."""
        outcomes = [
            o if o.job_id not in job_ids
            else dataclasses.replace(o, next_run_at=None) if o.final
            else dataclasses.replace(o, state=JobState.CANCELLED, error=CANCELLED, moved_to=None)
            for o in self.outcomes
        ]  # fmt: skip
        return Batch(outcomes, self.exchanges, self.pauses, self.robots)

    def only(
        self,
        outcome: Callable[[Outcome], bool],
        host: Callable[[str], bool],
        paused: Callable[[str], bool],
    ) -> Batch:
        """The part of the batch whose outcomes, requests' hosts and pauses' hosts pass."""
        return Batch(
            [o for o in self.outcomes if outcome(o)],
            [e for e in self.exchanges if host(e.host)],
            {h: t for h, t in sorted(self.pauses.items()) if paused(h)},
            self.robots,
        )


@dataclass(frozen=True, slots=True)
class Pruned:
    """One transaction of retention: results deleted, every row deleted, and the bodies of the
    layout before WARC that no result names any more."""

    results: int
    rows: int
    orphans: list[str]


class Tables(Protocol):
    """A backend's SQL for the tables a batch writes, inside the transaction it opened."""

    async def cancel_requested(self, job_ids: Sequence[int]) -> set[int]: ...
    async def insert_results(self, finals: Sequence[Outcome]) -> None: ...
    async def enqueue_webhooks(self, job_ids: Sequence[int]) -> None: ...
    async def stamp_feed(self) -> None: ...
    async def settle_jobs(self, outcomes: Sequence[Outcome]) -> None: ...
    async def read_counters(self, hosts: Sequence[str]) -> dict[str, Tally]: ...
    async def write_counters(self, counters: Mapping[str, Tally]) -> None: ...
    async def add_minutes(self, minutes: Mapping[tuple[str, int], Tally]) -> None: ...
    async def pause_hosts(self, pauses: Mapping[str, float]) -> None: ...
    async def keep_validators(self, validated: Sequence[Outcome]) -> None: ...
    async def keep_robots(self, verdicts: Sequence[Verdict]) -> None: ...


async def write(tables: Tables, batch: Batch) -> None:
    """A batch's steps in order, in the caller's transaction. A job cancelled while it ran
    ends here instead of going on; results go first: both they and the jobs skip a job this
    daemon no longer holds, and the validators read the results; a result's webhook event is
    written with it; the results take their places in commit order (the feed's) at the end."""
    going_on = [o.job_id for o in batch.outcomes if not o.final or o.next_run_at is not None]
    if going_on:
        cancelled = await tables.cancel_requested(going_on)
        if cancelled:
            batch = batch.cancelling(cancelled)
    if batch.finals:
        await tables.insert_results(batch.finals)
        await tables.enqueue_webhooks([o.job_id for o in batch.finals])
    if batch.validated:  # before the jobs are settled: a recurring job's run moves on there
        await tables.keep_validators(batch.validated)
    if batch.outcomes:  # a batch may hold only requests: the hops of redirect chains
        await tables.settle_jobs(batch.outcomes)
    if batch.exchanges:
        await count(tables, batch.exchanges)
    if batch.pauses:
        await tables.pause_hosts(batch.pauses)
    if batch.robots:
        await tables.keep_robots(batch.robots)
    if batch.finals:  # last: on PostgreSQL it holds the other daemons' results back till commit
        await tables.stamp_feed()


async def count(tables: Tables, exchanges: Sequence[Exchange]) -> None:
    """The seed's read-modify-write of the hosts' counters: read the rows, add the requests up
    (`counters.tally`), write them back, and add the batch's minutes. It awaits between the read
    and the write: the caller's lock (and on PostgreSQL the host rows' locks) keeps every other
    writer out meanwhile, so no update is lost."""
    counters = await tables.read_counters(sorted({e.host for e in exchanges}))
    minutes = tally(counters, exchanges)
    await tables.write_counters(counters)
    await tables.add_minutes(minutes)
