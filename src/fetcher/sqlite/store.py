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
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiosqlite
import orjson

from fetcher.counters import COUNTER_FIELDS, MINUTE_FIELDS, Tally, tally
from fetcher.errors import ConfigError, StoreUnavailable
from fetcher.jobqueue import HostLease, HostRate, process_alive
from fetcher.model import Exchange, Job, JobState, Outcome, Validators
from fetcher.robots import Verdict
from fetcher.sqlite.schema import connect_pragmas, migrate, prepare_path
from fetcher.urls import Target, stored_target

__all__ = ["SqliteQueue"]
_FINAL = (JobState.DONE, JobState.FAILED)
_MIN_SQLITE = (3, 35, 0)


class SqliteQueue:
    """The queue and the counters, as the daemon (and `fetcher submit`) write them."""

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self.owner = uuid.uuid4().hex
        # Guards every transaction on the shared connection; above all the read-modify-write
        # of a host's counters in `record`, which awaits between the read and the write.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, *, cache_mib: int = 8, busy_timeout_s: float = 10.0
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
        return cls(connection, path)

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

    async def submit(self, targets: Sequence[Target]) -> int:
        """Queue `targets`; returns how many were new (one already active is not queued again)."""
        now = time.time()
        # host by host (a stable sort keeps each host's order): the index inserts then touch
        # each page once per batch instead of once per URL
        rows = _json_array((t.url, t.host_key) for t in sorted(targets, key=_host_key))
        async with self._transaction("submit") as db:
            # One statement, its rows a JSON array: SQLite inserts them all without the GIL,
            # while `fetcher submit` parses the next chunk. With executemany the GIL came
            # back to this thread row by row and the two took turns (bench/insert_cost.py).
            cursor = await db.execute(
                "INSERT INTO jobs (url, host, state, created_at, updated_at)"
                f" SELECT {_field(0)}, {_field(1)}, 'queued', ?, ? FROM json_each(?) AS v"
                " WHERE true ON CONFLICT DO NOTHING",  # WHERE: how SQLite tells an upsert apart
                (now, now, rows),
            )
            added = cursor.rowcount
            await db.execute("UPDATE job_counts SET n = n + ? WHERE state = 'queued'", (added,))
            return added

    async def hosts_with_queued(self, after: str, limit: int) -> list[str]:
        """Up to `limit` hosts with queued jobs, in key order after `after` (an index walk)."""
        async with self._reading("hosts_with_queued") as db:
            cursor = await db.execute(
                """
                WITH RECURSIVE walk(host) AS (
                    SELECT (SELECT min(host) FROM jobs WHERE state = 'queued' AND host > ?)
                    UNION ALL
                    SELECT (SELECT min(host) FROM jobs WHERE state = 'queued' AND host > walk.host)
                    FROM walk WHERE walk.host IS NOT NULL
                    LIMIT ?
                )
                SELECT host FROM walk WHERE host IS NOT NULL
                """,
                (after, limit + 1),
            )
            return [row[0] for row in await cursor.fetchall()]

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Claim up to n queued jobs for each (host, n), oldest first, leased to this daemon."""
        now = time.time()
        jobs: list[Job] = []
        async with self._transaction("claim") as db:
            for host, n in wants:
                cursor = await db.execute(
                    "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?,"
                    " updated_at = ? WHERE id IN (SELECT id FROM jobs WHERE state = 'queued'"
                    " AND host = ? ORDER BY id LIMIT ?) RETURNING id, url, host, attempts",
                    (self.owner, now + lease_s, now, host, n),
                )
                rows = sorted(await cursor.fetchall())
                jobs.extend(
                    Job(i, url, h, attempts, stored_target(url, h)) for i, url, h, attempts in rows
                )
            if jobs:
                await self._attach_validators(db, jobs)
        return jobs

    async def _attach_validators(self, db: aiosqlite.Connection, jobs: list[Job]) -> None:
        cursor = await db.execute(
            "SELECT url, etag, last_modified, body_sha256, body_path FROM validators"
            " WHERE url IN (SELECT value FROM json_each(?))",
            (_json_array(job.url for job in jobs),),
        )
        kept = {row[0]: Validators(*row[1:]) for row in await cursor.fetchall()}
        for job in jobs:
            job.validators = kept.get(job.url)

    async def promote_due(self) -> int:
        """Jobs whose retry time has come go back to `queued`."""
        async with self._transaction("promote_due") as db:
            cursor = await db.execute(
                "UPDATE jobs SET state = 'queued', next_attempt_at = NULL, updated_at = ?"
                " WHERE state = 'retrying' AND next_attempt_at <= ?",
                (time.time(), time.time()),
            )
            return cursor.rowcount

    async def register(self) -> int:
        """Announce this daemon and take back what dead daemons of this database held:
        those on this machine whose process is gone, and any whose lease has run out."""
        now = time.time()
        async with self._transaction("register") as db:
            cursor = await db.execute("SELECT id, pid, hostname FROM daemons")
            dead = [
                owner
                for owner, pid, hostname in await cursor.fetchall()
                if hostname == socket.gethostname() and not process_alive(pid)
            ]
            await db.executemany("DELETE FROM daemons WHERE id = ?", [(d,) for d in dead])
            await db.execute(
                "INSERT INTO daemons VALUES (?, ?, ?, ?, ?)",
                (self.owner, os.getpid(), socket.gethostname(), now, now),
            )
            cursor = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE state = 'running' AND (lease_until < ? OR lease_owner"
                " IN (SELECT value FROM json_each(?)) OR lease_owner NOT IN"
                " (SELECT id FROM daemons))",
                (now, now, _json_array(dead)),
            )
            return cursor.rowcount

    async def heartbeat(self, lease_s: float) -> int:
        """Extend the leases of the jobs this daemon holds; take back expired ones of others."""
        now = time.time()
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

    async def release_all(self, rates: Mapping[str, HostRate] | None = None) -> int:
        """Put every job this daemon still holds back in the queue (end of shutdown). One
        daemon holds every host without a lease: there is no schedule to hand on."""
        async with self._transaction("release_all") as db:
            cursor = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " updated_at = ? WHERE state = 'running' AND lease_owner = ?",
                (time.time(), self.owner),
            )
            return cursor.rowcount

    def lease_end(self, host: str) -> float:
        return math.inf  # one daemon: every host is its own, without a lease

    def held_hosts(self) -> Collection[str]:
        return ()

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        return []

    async def unregister(self) -> None:
        async with self._transaction("unregister") as db:
            await db.execute("DELETE FROM daemons WHERE id = ?", (self.owner,))

    async def counts(self) -> dict[str, int]:
        async with self._reading("counts") as db:
            cursor = await db.execute("SELECT state, n FROM job_counts")
            return {state: n for state, n in await cursor.fetchall()}

    async def is_idle(self) -> bool:
        """No job anywhere is queued, retrying or running."""
        counts = await self.counts()
        return counts["queued"] + counts["retrying"] + counts["running"] == 0

    # -- outcomes and counters -------------------------------------------------------------

    async def paused_hosts(self) -> dict[str, float]:
        """Hosts still paused by a Retry-After or a 429 (host → unix time the pause ends);
        pauses that are over are deleted."""
        now = time.time()
        async with self._transaction("paused_hosts") as db:
            await db.execute("DELETE FROM host_pauses WHERE until <= ?", (now,))
            cursor = await db.execute("SELECT host, until FROM host_pauses")
            return {host: until for host, until in await cursor.fetchall()}

    async def record(
        self,
        outcomes: Sequence[Outcome],
        exchanges: Sequence[Exchange] = (),
        pauses: Mapping[str, float] | None = None,
        robots: Sequence[Verdict] = (),
    ) -> None:
        """Commit a batch: outcomes, the results of final ones, requests (`exchanges`) to the
        per-host counters and per-minute rows, host pauses (host → unix time the pause ends):
        all in one transaction."""
        now = time.time()
        finals = [o for o in outcomes if o.state in _FINAL]
        async with self._transaction("record") as db:
            # One statement per batch, its rows a JSON array: with executemany, statement
            # set-up and the job_counts trigger program ran once per row (BENCHMARKS.md,
            # "one statement per batch").
            # Results first: both statements skip a job whose lease another daemon took.
            if finals:
                await db.execute(
                    "INSERT OR REPLACE INTO results (job_id, url, host, final_url, state, status,"
                    " bytes, error, attempts, latency_ms, body_sha256, body_path, finished_at)"
                    f" SELECT jobs.id, jobs.url, jobs.host, {', '.join(map(_field, range(1, 10)))},"
                    f" ? FROM json_each(?) AS v JOIN jobs ON jobs.id = {_field(0)}"
                    " WHERE jobs.lease_owner = ?",
                    (
                        now,
                        _json_array(
                            (o.job_id, o.final_url, o.state.value, o.status, o.bytes, o.error,
                             o.attempts, o.latency_ms, o.body_sha256, o.body_path)
                            for o in finals
                        ),
                        self.owner,
                    ),
                )  # fmt: skip
            if outcomes:  # a batch may hold only requests: the hops of redirect chains
                await db.execute(
                    f"UPDATE jobs SET state = {_field(1)}, attempts = {_field(2)},"
                    f" next_attempt_at = {_field(3)}, lease_owner = NULL, lease_until = NULL,"
                    f" updated_at = ? FROM json_each(?) AS v"
                    f" WHERE jobs.id = {_field(0)} AND jobs.lease_owner = ?",
                    (
                        now,
                        _json_array((o.job_id, o.state.value, o.attempts, o.next_attempt_at)
                                   for o in outcomes),
                        self.owner,
                    ),
                )  # fmt: skip
            if exchanges:
                await self._count(db, exchanges)
            if pauses:
                await db.executemany(
                    "INSERT INTO host_pauses VALUES (?, ?) ON CONFLICT (host)"
                    " DO UPDATE SET until = max(until, excluded.until)",
                    list(pauses.items()),
                )
            validated = [
                (o.job_id, o.etag, o.last_modified, o.body_sha256, o.body_path)
                for o in finals
                if (o.etag or o.last_modified) and o.state is JobState.DONE
            ]
            if validated:  # the job's own URL, answered without a redirect
                await db.execute(
                    "INSERT OR REPLACE INTO validators SELECT jobs.url,"
                    f" {', '.join(map(_field, range(1, 5)))} FROM json_each(?) AS v"
                    f" JOIN jobs ON jobs.id = {_field(0)} JOIN results ON results.job_id = jobs.id"
                    " WHERE results.final_url = jobs.url",
                    (_json_array(validated),),
                )
            if robots:
                await db.executemany(
                    "INSERT OR REPLACE INTO robots_txt VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (v.origin, v.fetched_at, v.status, v.crawl_delay, v.size, v.body)
                        for v in robots
                    ],
                )

    async def _count(self, db: aiosqlite.Connection, exchanges: Sequence[Exchange]) -> None:
        hosts = sorted({e.host for e in exchanges})
        cursor = await db.execute(
            f"SELECT host, {', '.join(COUNTER_FIELDS)} FROM host_counters"
            " WHERE host IN (SELECT value FROM json_each(?))",
            (_json_array(hosts),),
        )
        counters = {row[0]: Tally(*row[1:]) for row in await cursor.fetchall()}
        minutes = tally(counters, exchanges)
        await db.executemany(
            f"INSERT OR REPLACE INTO host_counters (host, {', '.join(COUNTER_FIELDS)})"
            f" VALUES (?, {', '.join('?' * len(COUNTER_FIELDS))})",
            [(host, *c.values()) for host, c in counters.items()],
        )
        await db.executemany(
            "INSERT INTO host_minutes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, minute) DO UPDATE SET requests = requests + excluded.requests,"
            " status_2xx = status_2xx + excluded.status_2xx,"
            " status_3xx = status_3xx + excluded.status_3xx,"
            " status_4xx = status_4xx + excluded.status_4xx,"
            " status_5xx = status_5xx + excluded.status_5xx,"
            " errors = errors + excluded.errors, bytes = bytes + excluded.bytes,"
            " latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,"
            " latency_max_ms = max(latency_max_ms, excluded.latency_max_ms)",
            [
                (host, minute, *c.values()[: len(MINUTE_FIELDS)])
                for (host, minute), c in minutes.items()
            ],
        )

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        async with self._reading("cached_robots") as db:
            cursor = await db.execute(
                "SELECT origin, fetched_at, status, body, crawl_delay FROM robots_txt"
                " WHERE origin IN (SELECT value FROM json_each(?))",
                (_json_array(origins),),
            )
            return [Verdict(*row) for row in await cursor.fetchall()]

    # -- retention --------------------------------------------------------------------------

    async def prune(self, before: float, batch: int = 5000) -> tuple[int, list[str]]:
        """Delete finished jobs, results and minute rows older than `before`, a batch per
        transaction so fetching never waits long; returns (rows deleted, bodies no result
        names any more). Cumulative counters are never pruned."""
        deleted, orphans = 0, []
        while True:
            async with self._transaction("prune") as db:
                cursor = await db.execute(
                    "DELETE FROM results WHERE job_id IN (SELECT job_id FROM results"
                    " WHERE finished_at < ? LIMIT ?) RETURNING job_id, body_sha256",
                    (before, batch),
                )
                rows = list(await cursor.fetchall())
                await db.executemany(
                    "DELETE FROM jobs WHERE id = ? AND state IN ('done', 'failed')",
                    [(row[0],) for row in rows],
                )
                for sha in {row[1] for row in rows if row[1]}:
                    cursor = await db.execute(
                        "SELECT 1 FROM results WHERE body_sha256 = ? LIMIT 1", (sha,)
                    )
                    if await cursor.fetchone() is None:
                        orphans.append(sha)
                cursor = await db.execute(
                    "DELETE FROM host_minutes WHERE minute < ?", (int(before // 60),)
                )
                deleted += len(rows) + max(cursor.rowcount, 0)
            if len(rows) < batch:
                return deleted, orphans
            await asyncio.sleep(0)


def _host_key(target: Target) -> str:
    return target.host_key


def _json_array(items: Iterable[object]) -> str:
    """A batch as one parameter, read back in SQL with json_each (text: SQLite 3.45+ would
    take a blob for its binary JSON)."""
    return orjson.dumps(list(items)).decode()


def _field(i: int) -> str:
    """Column i of a row of `json_each(?) AS v` (json_extract: SQLite 3.35 has no ->>)."""
    return f"json_extract(v.value, '$[{i}]')"
