"""The queue interface: what the daemon and the commands ask of a queue, whatever holds it.

The seam is here, at the level of the domain, not at the database driver: another database
differs in its SQL, its locking and its counter arithmetic, so each backend implements these
whole. `JobQueue` is the daemon's and `fetcher submit`'s side (async); `QueueReader` is the
read side behind `stats`, `status` and `results` (plain calls: a command that reads answers in
tens of milliseconds, with no event loop to start). SQLite (`fetcher.sqlite`) is the embedded
default; PostgreSQL (`fetcher.postgres`) lets several daemons share one queue, each host leased
to one daemon at a time; the tests add one in memory.

Host leases: with one daemon (SQLite) the daemon holds every host, for ever (`lease_end` is
`inf`, `turn_hosts` acquires nothing). With several, a daemon starts a request to a host only
if the request will end before its lease on the host does, and the host's rate schedule goes
with the host from daemon to daemon (`HostRate`).

A backend raises `StoreUnavailable` for trouble that passes (locked, full, away) and lets
anything else through as the bug it is.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fetcher.model import Exchange, Job, Outcome
from fetcher.urls import Target

if TYPE_CHECKING:
    from fetcher.locations import Location
    from fetcher.robots import Verdict

__all__ = [
    "HostLease", "HostRate", "JobQueue", "QueueReader", "open_queue", "open_reader",
    "process_alive", "schema_version",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class HostRate:
    """A host's rate schedule as it passes from daemon to daemon: GCRA's theoretical arrival
    time and the end of its pause, in unix time (0: none)."""

    tat: float = 0.0
    paused_until: float = 0.0


@dataclass(frozen=True, slots=True)
class HostLease:
    """A host this daemon has just acquired, with the schedule its last holder left."""

    host: str
    rate: HostRate


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

    async def release_all(self, rates: Mapping[str, HostRate] | None = None) -> int:
        """Every job this daemon still holds goes back to `queued`, and every host it holds is
        handed back with its schedule in `rates`; how many jobs."""
        ...

    # -- host leases
    def lease_end(self, host: str) -> float:
        """When, on this process's monotonic clock, this daemon's lease on `host` ends: a
        request to it must have ended by then. `inf`: no lease is needed (one daemon);
        `-inf`: this daemon does not hold the host (or lost it)."""
        ...

    def held_hosts(self) -> Collection[str]:
        """The hosts this daemon holds under a lease (none where no lease is needed)."""
        ...

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        """Hand back the hosts in `release` that have nothing queued (keeping their schedule),
        then acquire up to `want` hosts with queued jobs that no live daemon holds."""
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


async def open_queue(
    db: Location, *, cache_mib: int = 8, busy_timeout_s: float = 10.0, lease_s: float = 90.0
) -> JobQueue:
    """The queue in database `db` (a SQLite file or a PostgreSQL URL), created or migrated as
    needed. `lease_s`: how long a host stays leased without a renewal (PostgreSQL)."""
    if not isinstance(db, Path):
        from fetcher.postgres.store import PostgresQueue

        return await PostgresQueue.open(db, busy_timeout_s=busy_timeout_s, lease_s=lease_s)
    from fetcher.sqlite.store import SqliteQueue

    return await SqliteQueue.open(db, cache_mib=cache_mib, busy_timeout_s=busy_timeout_s)


def open_reader(db: Location) -> QueueReader:
    """The read side of database `db`; never creates or changes anything."""
    if not isinstance(db, Path):
        from fetcher.postgres.reader import PostgresReader

        return PostgresReader(db)
    from fetcher.sqlite.reader import SqliteReader

    return SqliteReader(db)


def schema_version(db: Location) -> int:
    """The schema version this fetcher brings for the backend of `db`."""
    if not isinstance(db, Path):
        from fetcher.postgres.schema import SCHEMA_VERSION as POSTGRES_VERSION

        return POSTGRES_VERSION
    from fetcher.sqlite.schema import SCHEMA_VERSION

    return SCHEMA_VERSION


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is running: a daemon registered here whose process
    is gone holds nothing any more (its jobs and hosts are taken back at once)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
