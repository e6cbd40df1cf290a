"""The queue interface: what the daemon and the commands ask of a queue, whatever holds it.

The seam is here, at the level of the domain, not at the database driver: another database
differs in its SQL, its locking and its counter arithmetic, so each backend implements these
whole. `JobQueue` is the daemon's and `fetcher submit`'s side (async); `QueueReader` is the
read side behind `stats`, `status` and `results` (plain calls: a command that reads answers in
tens of milliseconds, with no event loop to start). SQLite (`fetcher.sqlite`) is the one
backend today; the tests add one in memory.

A backend raises `StoreUnavailable` for trouble that passes (locked, full, away) and lets
anything else through as the bug it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fetcher.model import Exchange, Job, Outcome
from fetcher.urls import Target

if TYPE_CHECKING:
    from pathlib import Path

    from fetcher.robots import Verdict

__all__ = ["JobQueue", "QueueReader", "open_queue", "open_reader"]


class JobQueue(Protocol):
    """The durable queue with its counters, as one daemon (identified by `owner`) uses it."""

    owner: str

    async def close(self) -> None: ...

    def about(self) -> dict[str, str]:
        """What the daemon logs at start: the backend, its version, where it is."""
        ...

    # -- submission
    async def submit(self, targets: Sequence[Target]) -> int:
        """Queue `targets` in one transaction; how many were new (a URL already queued,
        retrying or running is not queued again)."""
        ...

    # -- claims and leases
    async def hosts_with_queued(self, after: str, limit: int) -> list[str]:
        """Up to `limit` host keys with queued jobs, in key order after `after`."""
        ...

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Up to n queued jobs for each (host, n), oldest first, leased to this daemon; each
        with the validators its URL's last done fetch left (for a conditional GET)."""
        ...

    async def promote_due(self) -> int:
        """Jobs whose retry time has come go back to `queued`; how many."""
        ...

    async def register(self) -> int:
        """Announce this daemon; take back the jobs of dead ones. How many were taken back."""
        ...

    async def heartbeat(self, lease_s: float) -> int:
        """Extend this daemon's leases; take back expired leases of others. How many."""
        ...

    async def release_all(self) -> int:
        """Every job this daemon still holds goes back to `queued`; how many."""
        ...

    async def unregister(self) -> None: ...

    # -- outcomes, counters, pauses
    async def record(
        self,
        outcomes: Sequence[Outcome],
        exchanges: Sequence[Exchange] = (),
        pauses: Mapping[str, float] | None = None,
        robots: Sequence[Verdict] = (),
    ) -> None:
        """One transaction: the outcomes (and results of final ones) of jobs this daemon
        still holds, with the validators of done ones; the requests to the per-host counters;
        host pauses (host → unix time); robots.txt verdicts (origin → the latest)."""
        ...

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        """The stored robots.txt verdicts of `origins` (those it has)."""
        ...

    async def paused_hosts(self) -> dict[str, float]:
        """Hosts still paused (host → unix time the pause ends)."""
        ...

    async def counts(self) -> dict[str, int]:
        """Jobs by state: queued, retrying, running, done, failed."""
        ...

    async def is_idle(self) -> bool:
        """No job anywhere is queued, retrying or running."""
        ...

    async def prune(self, before: float) -> tuple[int, list[str]]:
        """Delete finished jobs, results and minute rows older than `before` (unix time);
        (rows deleted, body digests no result names any more)."""
        ...


class QueueReader(Protocol):
    """The read side: rows as dicts with the public views' column names."""

    def close(self) -> None: ...

    def host_stats(self) -> list[dict[str, Any]]:
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

    def results(self, state: str | None, since: float | None) -> Iterator[dict[str, Any]]:
        """Finished jobs, oldest first (`finished_at` in ISO 8601)."""
        ...

    def minute_rows(self, since_minute: int) -> list[dict[str, Any]]:
        """Per host and minute (`at`: unix seconds), by host then minute."""
        ...

    def robots(self, origins: Sequence[str]) -> list[Verdict]:
        """The cached robots.txt verdicts of `origins` (those there are)."""
        ...


async def open_queue(db: Path, *, cache_mib: int = 8, busy_timeout_s: float = 10.0) -> JobQueue:
    """The queue in database `db`, created or migrated as needed."""
    from fetcher.sqlite.store import SqliteQueue

    return await SqliteQueue.open(db, cache_mib=cache_mib, busy_timeout_s=busy_timeout_s)


def open_reader(db: Path) -> QueueReader:
    """The read side of database `db`; never creates or changes anything."""
    from fetcher.sqlite.reader import SqliteReader

    return SqliteReader(db)
