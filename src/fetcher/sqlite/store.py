"""The daemon's side of the SQLite database: claims with leases, outcomes and counters, in
batches (`JobQueue` of `fetcher.jobqueue`).

One aiosqlite connection serves every task, and aiosqlite runs each statement on its own
thread: two tasks' statements would interleave, and one task's COMMIT would commit the other's
half-done transaction. So every transaction runs under `_lock`, and `BEGIN IMMEDIATE` takes
SQLite's write lock up front (a plain BEGIN that reads then writes fails at once while another
process writes). Claims and outcomes are batched: no request costs a round trip of its own.

SQLite's operational errors (locked past the busy timeout, disk full, read-only file, I/O
error) leave as `StoreUnavailable`: the daemon waits and tries again. A transaction they cut
short is rolled back, and the connection is usable again as soon as SQLite is.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from fetcher.batch import Batch, Pruned, write
from fetcher.clocks import Clocks
from fetcher.daemons import dead_here, new_owner, this_machine
from fetcher.errors import ConfigError, StoreUnavailable
from fetcher.jobqueue import Delivery, Once, Redrive, Settled
from fetcher.model import (
    HostLease,
    HostRate,
    HostWalk,
    Job,
    JobRequest,
    JobState,
    Submitted,
    Validators,
    Verdict,
)
from fetcher.recurrence import recurrence_of
from fetcher.sqlite import outbox, retention, runs, submits
from fetcher.sqlite.schema import connect_pragmas, migrate, prepare_path
from fetcher.sqlite.tables import SqliteTables, json_array
from fetcher.urls import stored_target

__all__ = ["SqliteQueue"]
_MIN_SQLITE = (3, 35, 0)


class SqliteQueue:
    """The queue and the counters, as the daemon (and `fetcher submit`) write them."""

    def __init__(
        self,
        connection: aiosqlite.Connection,
        path: Path,
        clocks: Clocks,
        webhook_url: str | None = None,
    ) -> None:
        self._webhook = webhook_url  # FETCHER_WEBHOOK_URL: told of the jobs that name none
        self._db = connection
        self.path = path
        self.owner = new_owner()
        self._clocks = clocks
        # Guards every transaction on the shared connection; above all the read-modify-write
        # of a host's counters in `record`, which awaits between the read and the write.
        self._lock = asyncio.Lock()
        self._restored_after: str | None = ""  # host schedules taken up so far (None: all)

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        cache_mib: int = 8,
        busy_timeout_s: float = 10.0,
        clocks: Clocks | None = None,
        webhook_url: str | None = None,
    ) -> SqliteQueue:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ConfigError(
                f"SQLite {sqlite3.sqlite_version} is too old: fetcher needs 3.35 or newer"
                " (RETURNING, UPDATE … FROM)"
            )
        pragmas = connect_pragmas(cache_mib, busy_timeout_ms=round(busy_timeout_s * 1000))
        try:
            prepare_path(path)
            with sqlite3.connect(path, isolation_level=None) as plain:
                plain.executescript(pragmas)
                migrate(plain)
            plain.close()
            connection = await aiosqlite.connect(path, isolation_level=None)
            await connection.executescript(pragmas)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("open", f"{path}: {exc}") from exc
        return cls(connection, path, clocks or Clocks(), webhook_url)

    def about(self) -> dict[str, str]:
        about = {"backend": "sqlite", "sqlite": sqlite3.sqlite_version, "db": str(self.path)}
        if sqlite3.sqlite_version_info < (3, 51, 3):
            about["note"] = "this SQLite predates the WAL-reset fix (3.51.3)"
        return about

    async def close(self) -> None:
        await self._db.close()

    @asynccontextmanager
    async def _transaction(self, operation: str) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction under `_lock`, begun IMMEDIATE; SQLite's operational errors
        become `StoreUnavailable(operation, …)`."""
        async with self._lock:
            try:
                if self._db.in_transaction:  # a ROLLBACK that failed last time (disk full)
                    await self._db.execute("ROLLBACK")
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    await self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with suppress(sqlite3.Error):  # tried again at the next BEGIN
                            await self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(operation, str(exc)) from exc

    @asynccontextmanager
    async def _reading(self, operation: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for a read, under `_lock`; errors as in `_transaction`."""
        async with self._lock:
            try:
                yield self._db
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(operation, str(exc)) from exc

    # -- the queue -------------------------------------------------------------------------

    async def submit(self, jobs: Sequence[JobRequest]) -> list[Submitted]:
        """Queue `jobs` in one transaction; for each, its new id, or the id of the same request
        already queued, retrying or running (`fetcher.sqlite.submits`)."""
        async with self._transaction("submit") as db:
            return await submits.submit(db, jobs, self._clocks.wall())

    async def cancel(self, ids: Sequence[int]) -> dict[int, JobState]:
        """Cancel jobs: a queued or retrying one ends `cancelled` now, a running one after its
        current request; the state each known job was in before."""
        async with self._transaction("cancel") as db:
            return await submits.cancel(db, ids, self.owner, self._clocks.wall(), self._webhook)

    async def hosts_with_queued(self, after: str, limit: int) -> HostWalk:
        """Up to `limit` hosts with queued jobs, in key order after `after` (an index walk)."""
        async with self._reading("hosts_with_queued") as db:
            cursor = await db.execute(_HOSTS_WITH_QUEUED, (after, limit + 1))
            hosts = [row[0] for row in await cursor.fetchall()]
        return HostWalk(hosts[:limit], hosts[limit - 1] if len(hosts) > limit else None)

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Claim up to n queued jobs for each (host, n), the highest priority first, then the
        oldest, leased to this daemon; with their requests and validators."""
        now = self._clocks.wall()
        jobs: list[Job] = []
        async with self._transaction("claim") as db:
            for host, n in wants:
                cursor = await db.execute(
                    "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?,"
                    " updated_at = ? WHERE id IN (SELECT id FROM jobs WHERE state = 'queued'"
                    " AND host = ? ORDER BY priority DESC, id LIMIT ?) RETURNING id, url, host,"
                    " attempts, method, priority, max_attempts, timeout_s, retry, every_s,"
                    " adaptive, min_every_s, max_every_s, last_sha256",
                    (self.owner, now + lease_s, now, host, n),
                )
                jobs.extend(_claimed(row) for row in await cursor.fetchall())
            if jobs:
                await self._attach(db, jobs)
        jobs.sort(key=lambda job: (job.host, -job.priority, job.id))
        return jobs

    async def _attach(self, db: aiosqlite.Connection, jobs: list[Job]) -> None:
        """The requests of the jobs that carry one, and the validators of their URLs."""
        cursor = await db.execute(
            "SELECT job_id, headers, body FROM job_requests"
            " WHERE job_id IN (SELECT value FROM json_each(?))",
            (json_array(job.id for job in jobs),),
        )
        requests = {row[0]: row[1:] for row in await cursor.fetchall()}
        cursor = await db.execute(
            "SELECT url, etag, last_modified, body_sha256, body_path FROM validators"
            " WHERE url IN (SELECT value FROM json_each(?))",
            (json_array(job.url for job in jobs if job.method == "GET"),),
        )
        kept = {row[0]: Validators(*row[1:]) for row in await cursor.fetchall()}
        for job in jobs:
            if job.id in requests:
                headers, job.body = requests[job.id]
                job.headers = tuple(map(tuple, orjson.loads(headers)))
            job.validators = kept.get(job.url) if job.method == "GET" else None

    async def promote_due(self) -> int:
        async with self._transaction("promote_due") as db:
            return await runs.promote_due(db, self._clocks.wall())

    async def waiting_runs(self) -> int:
        async with self._reading("waiting_runs") as db:
            return await runs.waiting_runs(db)

    async def redrive(self, which: Redrive, *, dry_run: bool = False) -> int:
        async with self._transaction("redrive") as db:
            return await runs.redrive(db, which, self._clocks.wall(), dry_run)

    # -- daemons ----------------------------------------------------------------------------

    async def register(self) -> int:
        """Announce this daemon and take back what dead daemons of this database held:
        those on this machine whose process is gone, and any whose lease has run out."""
        now = self._clocks.wall()
        async with self._transaction("register") as db:
            cursor = await db.execute("SELECT id, pid, hostname FROM daemons")
            dead = dead_here(await cursor.fetchall())
            await db.executemany("DELETE FROM daemons WHERE id = ?", [(d,) for d in dead])
            await db.execute(
                "INSERT INTO daemons VALUES (?, ?, ?, ?, ?)",
                (self.owner, os.getpid(), this_machine(), now, now),
            )
            cursor = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE state = 'running' AND (lease_until < ? OR lease_owner"
                " IN (SELECT value FROM json_each(?)) OR lease_owner NOT IN"
                " (SELECT id FROM daemons))",
                (now, now, json_array(dead)),
            )
            return cursor.rowcount

    async def heartbeat(self, lease_s: float) -> int:
        """Extend the leases of the jobs this daemon holds; take back expired ones of others."""
        now = self._clocks.wall()
        async with self._transaction("heartbeat") as db:
            await db.execute("UPDATE daemons SET heartbeat_at = ? WHERE id = ?", (now, self.owner))
            await db.execute(
                "UPDATE jobs SET lease_until = ? WHERE state = 'running' AND lease_owner = ?",
                (now + lease_s, self.owner),
            )
            await db.execute(
                "DELETE FROM daemons WHERE heartbeat_at < ? AND id <> ?",
                (now - lease_s, self.owner),
            )
            cursor = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE state = 'running' AND lease_owner <> ? AND lease_until < ?",
                (now, self.owner, now),
            )
            return cursor.rowcount

    async def release_all(self, rates: Mapping[str, HostRate]) -> int:
        """Put every job this daemon still holds back in the queue, and keep the pauses of its
        hosts for the next start (end of shutdown)."""
        now = self._clocks.wall()
        paused = {host: r.paused_until for host, r in rates.items() if r.paused_until > now}
        async with self._transaction("release_all") as db:
            cursor = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE state = 'running' AND lease_owner = ?",
                (now, self.owner),
            )
            if paused:
                await SqliteTables(db, self.owner, now).pause_hosts(paused)
            return cursor.rowcount

    async def unregister(self) -> None:
        async with self._transaction("unregister") as db:
            await db.execute("DELETE FROM daemons WHERE id = ?", (self.owner,))

    # -- host leases: one daemon holds every host, for ever ---------------------------------

    def lease_end(self, host: str) -> float:
        return math.inf

    def held_hosts(self) -> Collection[str]:
        return ()  # an endless lease: nothing to hand back while the daemon runs

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        """The hosts whose pause outlived the last run, `want` at a time, until all are taken
        up (the first turns after start); nothing after that, nothing to hand back."""
        if self._restored_after is None or want <= 0:
            return []
        now = self._clocks.wall()
        async with self._transaction("turn_hosts") as db:
            await db.execute("DELETE FROM host_pauses WHERE until <= ?", (now,))
            cursor = await db.execute(
                "SELECT host, until FROM host_pauses WHERE host > ? ORDER BY host LIMIT ?",
                (self._restored_after, want),
            )
            rows = list(await cursor.fetchall())
        self._restored_after = rows[-1][0] if len(rows) >= want else None
        return [HostLease(host, HostRate(paused_until=until)) for host, until in rows]

    # -- outcomes and counters -------------------------------------------------------------

    async def record(self, batch: Batch) -> None:
        async with self._transaction("record") as db:
            await write(SqliteTables(db, self.owner, self._clocks.wall(), self._webhook), batch)

    async def counts(self) -> dict[str, int]:
        async with self._reading("counts") as db:
            cursor = await db.execute("SELECT state, n FROM job_counts")
            return {state: n for state, n in await cursor.fetchall()}

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        async with self._reading("cached_robots") as db:
            cursor = await db.execute(
                "SELECT origin, fetched_at, status, body, crawl_delay FROM robots_txt"
                " WHERE origin IN (SELECT value FROM json_each(?))",
                (json_array(origins),),
            )
            return [Verdict(*row) for row in await cursor.fetchall()]

    # -- retention --------------------------------------------------------------------------

    async def prune(self, before: float, limit: int) -> Pruned:
        async with self._transaction("prune") as db:
            return await retention.prune(db, before, limit)

    async def expire(self, now: float) -> int:
        async with self._transaction("expire") as db:
            return await retention.expire(db, now)

    # -- the service (fetcher.sqlite.submits, fetcher.sqlite.outbox) --------------------------

    async def submit_once(self, jobs: Sequence[JobRequest], once: Once) -> tuple[str, bool]:
        async with self._transaction("submit") as db:
            return await submits.submit_once(db, jobs, self._clocks.wall(), once)

    async def claim_webhooks(self, limit: int, lease_s: float) -> list[Delivery]:
        async with self._transaction("claim_webhooks") as db:
            return await outbox.claim(db, self.owner, self._clocks.wall(), limit, lease_s)

    async def settle_webhooks(self, settled: Sequence[Settled]) -> None:
        async with self._transaction("settle_webhooks") as db:
            await outbox.settle(db, self._clocks.wall(), settled)

    async def watch_results(self, wake: Callable[[], None]) -> None:
        """One daemon per database: no other commits results that its API must hear of at
        once (a `fetcher cancel` from the shell is read at the next second)."""


_HOSTS_WITH_QUEUED = """
WITH RECURSIVE walk(host) AS (
    SELECT (SELECT min(host) FROM jobs WHERE state = 'queued' AND host > ?)
    UNION ALL
    SELECT (SELECT min(host) FROM jobs WHERE state = 'queued' AND host > walk.host)
    FROM walk WHERE walk.host IS NOT NULL
    LIMIT ?
)
SELECT host FROM walk WHERE host IS NOT NULL
"""


def _claimed(row: Sequence[Any]) -> Job:
    job_id, url, host, attempts, method, priority, max_attempts, timeout_s, retry = row[:9]
    every_s, adaptive, low, high, last_sha256 = row[9:]
    return Job(
        job_id, url, host, attempts, stored_target(url, host), method=method, priority=priority,
        max_attempts=max_attempts, timeout_s=timeout_s, retry=bool(retry), first_method=method,
        recurrence=recurrence_of(every_s, bool(adaptive), low, high), last_sha256=last_sha256,
    )  # fmt: skip
