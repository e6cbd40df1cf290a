"""The daemon's side of the PostgreSQL queue (`JobQueue` of `fetcher.jobqueue`): claims,
outcomes and counters, in batches, with the host leases of `fetcher.postgres.leases`. Several
daemons share it.

- claim: a few seconds' worth of queued jobs per held host, `FOR UPDATE SKIP LOCKED`, each
  stamped with its host's epoch; the partial index on queued jobs per host keeps a claim's cost
  flat with millions queued at one host.
- commit: `record` locks the batch's host rows in host order, keeps only the outcomes of jobs
  claimed under the epoch their host still has, and adds the batch's requests to the counters
  read under that lock: the seed's read-modify-write, with the row lock as the distributed lock
  and the commits connection's `asyncio.Lock` as the daemon's own.

Two connections, each one transaction at a time: batch commits on one, claims and leases on the
other, so neither waits behind the other. Their errors that pass (the server restarting, a lock
held past the busy timeout, a deadlock broken, the disk full) leave as `StoreUnavailable`; a
broken connection is opened again at the next call. What the daemon holds stays in memory
until it commits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, suppress

import asyncpg

from fetcher.counters import COUNTER_FIELDS, MINUTE_FIELDS, Tally, tally
from fetcher.errors import StoreUnavailable
from fetcher.jobqueue import HostLease, HostRate
from fetcher.locations import masked
from fetcher.model import Exchange, Job, JobState, Outcome, Validators
from fetcher.postgres.connection import (
    Channel,
    commits_shard,
    connect,
    fold_shards,
    row_count,
    shards_of,
    unavailable,
)
from fetcher.postgres.leases import HostLeases
from fetcher.postgres.schema import migrate
from fetcher.robots import Verdict
from fetcher.urls import Target, stored_target

__all__ = ["PostgresQueue"]

_FINAL = (JobState.DONE, JobState.FAILED)


class PostgresQueue:
    """The queue, the counters and the host leases, as a daemon (or `fetcher submit`) uses them."""

    def __init__(
        self, url: str, connection: asyncpg.Connection, owner: str, *, lock_s: float, lease_s: float
    ) -> None:
        self._url = url
        self.owner = owner
        # Two connections, each one transaction at a time under its lock: the batch commits
        # (`record`: above all the read-modify-write of the hosts' counters, which awaits
        # between the read and the write) go on beside the claims and leases, never behind them.
        # Each counts jobs in a shard of its own: were they one, a claim's trigger and a
        # commit's would wait on each other's count rows while holding the host rows
        self._main = Channel(url, owner, lock_s, connection)
        self._commits = Channel(url, commits_shard(owner), lock_s)
        self._leases = HostLeases(owner, lease_s)

    @classmethod
    async def open(
        cls, url: str, *, busy_timeout_s: float = 10.0, lease_s: float = 90.0
    ) -> PostgresQueue:
        owner = uuid.uuid4().hex
        try:
            connection = await connect(url, shard=owner, timeout_s=busy_timeout_s)
            try:
                await migrate(connection)
            except BaseException:
                await connection.close()
                raise
        except Exception as exc:
            if unavailable(exc) or isinstance(exc, asyncpg.InvalidCatalogNameError):
                raise StoreUnavailable("open", f"{masked(url)}: {exc}") from exc
            raise
        return cls(url, connection, owner, lock_s=busy_timeout_s, lease_s=lease_s)

    def about(self) -> dict[str, str]:
        db = self._main.db
        version = db.get_server_version() if db is not None else None
        server = "?"
        if version is not None:  # 15.20 is (15, 0, 20): since 10, the second number is micro
            minor = version.micro if version.major >= 10 else version.minor
            server = f"{version.major}.{minor}"
        return {"backend": "postgresql", "postgresql": server, "db": str(masked(self._url))}

    async def close(self) -> None:
        with suppress(Exception):  # a best effort: the counts are right without it
            async with self._main.transaction("close") as db:
                await fold_shards(db, shards_of([self.owner]))
        await self._commits.close()
        await self._main.close()

    def _transaction(self, operation: str) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return self._main.transaction(operation)

    # -- submission ------------------------------------------------------------------------

    async def submit(self, targets: Sequence[Target]) -> int:
        """Queue `targets` in one statement; how many were new."""
        now = time.time()
        ordered = sorted(targets, key=lambda t: t.host_key)  # host rows are locked in order
        async with self._transaction("submit") as db:
            status = await db.execute(
                "INSERT INTO jobs (url, host, state, created_at, updated_at)"
                " SELECT u, h, 'queued', $3, $3 FROM unnest($1::text[], $2::text[]) AS v(u, h)"
                " ON CONFLICT (url) WHERE state IN ('queued', 'retrying', 'running') DO NOTHING",
                [t.url for t in ordered],
                [t.host_key for t in ordered],
                now,
            )
        return row_count(status)

    # -- host leases (fetcher.postgres.leases) ------------------------------------------------

    def lease_end(self, host: str) -> float:
        return self._leases.lease_end(host)

    def held_hosts(self) -> Collection[str]:
        return self._leases.held_hosts()

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        """Hand back the hosts in `release` that have nothing queued (or that are over the
        fair share) and whose outcomes are all committed; then acquire up to `want` hosts with
        queued jobs, within the fair share: hosts with work ÷ live daemons."""
        async with self._transaction("turn_hosts") as db:
            return await self._leases.turn(db, release, want)

    # -- claims -----------------------------------------------------------------------------

    async def hosts_with_queued(self, after: str, limit: int) -> list[str]:
        """Up to `limit` (+1) hosts this daemon holds with queued jobs, in key order after
        `after`; hosts it is handing back are left out."""
        async with self._transaction("hosts_with_queued") as db:
            rows = await db.fetch(
                "SELECT host FROM hosts WHERE owner = $1 AND backlog > 0 AND host > $2"
                " AND NOT host = ANY($4::text[]) ORDER BY host LIMIT $3",
                self.owner,
                after,
                limit + 1,
                list(self._leases.surrender),
            )
        return [row[0] for row in rows if self._leases.holds(row[0])]

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Up to n queued jobs for each (host, n) this daemon holds, oldest first, each stamped
        with the host's epoch; with their validators."""
        wants = [(host, n) for host, n in wants if self._leases.holds(host)]
        if not wants:
            return []
        async with self._transaction("claim") as db:
            rows = await db.fetch(
                """
                WITH picked AS (
                    SELECT j.id, h.epoch
                    FROM unnest($1::text[], $2::int[]) AS w(host, n)
                    JOIN hosts h ON h.host = w.host AND h.owner = $3
                    CROSS JOIN LATERAL (
                        SELECT id FROM jobs WHERE state = 'queued' AND host = w.host
                        ORDER BY id LIMIT w.n FOR UPDATE SKIP LOCKED
                    ) AS j
                )
                UPDATE jobs SET state = 'running', lease_owner = $3, lease_epoch = picked.epoch,
                    updated_at = $4
                FROM picked WHERE jobs.id = picked.id
                RETURNING jobs.id, jobs.url, jobs.host, jobs.attempts, jobs.resume_url,
                    jobs.hops, jobs.lease_epoch
                """,
                [h for h, _ in wants],
                [n for _, n in wants],
                self.owner,
                time.time(),
            )
            jobs = []
            for row in sorted(rows, key=lambda r: r["id"]):
                resume = row["resume_url"] or row["url"]
                jobs.append(
                    Job(
                        row["id"], row["url"], row["host"], row["attempts"],
                        stored_target(resume, row["host"]), hops=row["hops"],
                    )
                )  # fmt: skip
                self._leases.claimed(row["id"], row["host"], row["lease_epoch"])
            if jobs:
                kept = await db.fetch(
                    "SELECT url, etag, last_modified, body_sha256, body_path FROM validators"
                    " WHERE url = ANY($1::text[])",
                    [job.url for job in jobs],
                )
                validators = {row[0]: Validators(*row[1:]) for row in kept}
                for job in jobs:
                    job.validators = validators.get(job.url)
        return jobs

    async def promote_due(self) -> int:
        async with self._transaction("promote_due") as db:
            status = await db.execute(
                "UPDATE jobs SET state = 'queued', next_attempt_at = NULL, updated_at = $1"
                " WHERE state = 'retrying' AND next_attempt_at <= $1",
                time.time(),
            )
        return row_count(status)

    # -- daemons ----------------------------------------------------------------------------

    async def register(self) -> int:
        """Announce this daemon; free at once what dead daemons on this machine held (their
        process is gone, so none of their requests is in flight). Others' leases run out."""
        async with self._transaction("register") as db:
            return await self._leases.register(db)

    async def heartbeat(self, lease_s: float) -> int:
        """Renew every held host in one statement (a host missing from the answer is lost);
        free hosts whose leases ran out, and take back the jobs whose claimer lost its host."""
        async with self._transaction("heartbeat") as db:
            return await self._leases.renew(db, lease_s)

    async def release_all(self, rates: Mapping[str, HostRate] | None = None) -> int:
        """Every job this daemon still holds goes back to the queue; every host it holds is
        handed back at once, with its schedule, to whichever daemon acquires it next."""
        async with self._transaction("release_all") as db:
            status = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
                " updated_at = $2 WHERE state = 'running' AND lease_owner = $1",
                self.owner,
                time.time(),
            )
            await self._leases.release_all(db, rates or {})
        return row_count(status)

    async def unregister(self) -> None:
        async with self._transaction("unregister") as db:
            await db.execute("DELETE FROM daemons WHERE id = $1", self.owner)

    async def counts(self) -> dict[str, int]:
        async with self._transaction("counts") as db:
            rows = await db.fetch("SELECT state, jobs FROM queue")
        return {row[0]: int(row[1]) for row in rows}

    async def is_idle(self) -> bool:
        counts = await self.counts()
        return counts["queued"] + counts["retrying"] + counts["running"] == 0

    async def paused_hosts(self) -> dict[str, float]:
        """Pauses travel with the hosts' leases here (`HostLease.rate`): none to restore."""
        return {}

    # -- outcomes and counters -----------------------------------------------------------------

    async def record(
        self,
        outcomes: Sequence[Outcome],
        exchanges: Sequence[Exchange] = (),
        pauses: Mapping[str, float] | None = None,
        robots: Sequence[Verdict] = (),
    ) -> None:
        """Commit a batch in one transaction. The host rows of its jobs and requests are locked
        in host order first; an outcome counts only if its job was claimed under the epoch its
        host still has with this daemon, and a request only if its host is this daemon's or
        one it never held (a hop elsewhere); the rest changes nothing."""
        now = time.time()
        pauses = pauses or {}
        async with self._commits.transaction("record") as db:
            leases = self._leases
            touched = leases.hosts_of(outcomes) | {e.host for e in exchanges} | set(pauses)
            mine = await leases.lock(db, touched)
            kept = [o for o in outcomes if leases.still_mine(o.job_id, mine)]
            counted = [e for e in exchanges if leases.counts(e.host, mine)]
            finals = [o for o in kept if o.state in _FINAL]
            if finals:
                await db.execute(
                    "INSERT INTO results (job_id, url, host, final_url, state, status, bytes,"
                    " error, attempts, latency_ms, body_sha256, body_path, finished_at)"
                    " SELECT jobs.id, jobs.url, jobs.host, v.final_url, v.state, v.status,"
                    " v.bytes, v.error, v.attempts, v.latency_ms, v.sha, v.path, $11"
                    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bigint[],"
                    " $6::text[], $7::int[], $8::float8[], $9::text[], $10::text[])"
                    " AS v(id, final_url, state, status, bytes, error, attempts, latency_ms,"
                    " sha, path) JOIN jobs ON jobs.id = v.id AND jobs.lease_owner = $12"
                    " ON CONFLICT (job_id) DO UPDATE SET final_url = excluded.final_url,"
                    " state = excluded.state, status = excluded.status, bytes = excluded.bytes,"
                    " error = excluded.error, attempts = excluded.attempts,"
                    " latency_ms = excluded.latency_ms, body_sha256 = excluded.body_sha256,"
                    " body_path = excluded.body_path, finished_at = excluded.finished_at",
                    [o.job_id for o in finals],
                    [o.final_url for o in finals],
                    [o.state.value for o in finals],
                    [o.status for o in finals],
                    [o.bytes for o in finals],
                    [o.error for o in finals],
                    [o.attempts for o in finals],
                    [o.latency_ms for o in finals],
                    [o.body_sha256 for o in finals],
                    [o.body_path for o in finals],
                    now,
                    self.owner,
                )
            if kept:
                await self._settle_jobs(db, kept, now)
            if counted:
                await self._count(db, counted)
            paused = [(h, t) for h, t in sorted(pauses.items()) if h in mine]
            if paused:
                await db.execute(
                    "UPDATE hosts SET paused_until = greatest(paused_until, v.until),"
                    " next_ready = greatest(next_ready, v.until)"
                    " FROM unnest($1::text[], $2::float8[]) AS v(host, until)"
                    " WHERE hosts.host = v.host",
                    [h for h, _ in paused],
                    [t for _, t in paused],
                )
            validated = [
                o for o in finals if (o.etag or o.last_modified) and o.state is JobState.DONE
            ]
            if validated:  # the job's own URL, answered without a redirect
                await db.execute(
                    "INSERT INTO validators (url, etag, last_modified, body_sha256, body_path)"
                    " SELECT jobs.url, v.etag, v.modified, v.sha, v.path"
                    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])"
                    " AS v(id, etag, modified, sha, path) JOIN jobs ON jobs.id = v.id"
                    " JOIN results ON results.job_id = jobs.id AND results.final_url = jobs.url"
                    " ON CONFLICT (url) DO UPDATE SET etag = excluded.etag,"
                    " last_modified = excluded.last_modified,"
                    " body_sha256 = excluded.body_sha256, body_path = excluded.body_path",
                    [o.job_id for o in validated],
                    [o.etag for o in validated],
                    [o.last_modified for o in validated],
                    [o.body_sha256 for o in validated],
                    [o.body_path for o in validated],
                )
            if robots:
                await db.executemany(
                    "INSERT INTO robots_txt VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (origin)"
                    " DO UPDATE SET fetched_at = excluded.fetched_at, status = excluded.status,"
                    " crawl_delay = excluded.crawl_delay, size = excluded.size,"
                    " body = excluded.body",
                    [
                        (v.origin, v.fetched_at, v.status, v.crawl_delay, v.size, v.body)
                        for v in robots
                    ],
                )
        self._leases.settled(outcomes)  # committed, or refused for good

    async def _settle_jobs(self, db: asyncpg.Connection, kept: list[Outcome], now: float) -> None:
        await db.execute(
            "UPDATE jobs SET state = v.state, attempts = v.attempts,"
            " next_attempt_at = v.next_at, lease_owner = NULL, lease_epoch = NULL,"
            " updated_at = $7, host = coalesce(v.host, jobs.host),"
            " resume_url = CASE WHEN v.host IS NULL THEN jobs.resume_url ELSE v.resume END,"
            " hops = coalesce(v.hops, jobs.hops)"
            " FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::text[],"
            " $6::text[], $8::int[]) AS v(id, state, attempts, next_at, host, resume, hops)"
            " WHERE jobs.id = v.id AND jobs.lease_owner = $9",
            [o.job_id for o in kept],
            [o.state.value for o in kept],
            [o.attempts for o in kept],
            [o.next_attempt_at for o in kept],
            [o.moved_to.host_key if o.moved_to else None for o in kept],
            [o.moved_to.url if o.moved_to else None for o in kept],
            now,
            [o.hops if o.moved_to else None for o in kept],
            self.owner,
        )

    async def _count(self, db: asyncpg.Connection, exchanges: Sequence[Exchange]) -> None:
        """The read-modify-write of the hosts' counters, under their row locks."""
        hosts = sorted({e.host for e in exchanges})
        rows = await db.fetch(
            f"SELECT host, {', '.join(COUNTER_FIELDS)} FROM host_counters"
            " WHERE host = ANY($1::text[])",
            hosts,
        )
        counters = {row[0]: Tally(*row[1:]) for row in rows}
        minutes = tally(counters, exchanges)
        marks = ", ".join(f"${i}" for i in range(2, len(COUNTER_FIELDS) + 2))
        await db.executemany(
            f"INSERT INTO host_counters (host, {', '.join(COUNTER_FIELDS)}) VALUES ($1, {marks})"
            " ON CONFLICT (host) DO UPDATE SET "
            + ", ".join(f"{f} = excluded.{f}" for f in COUNTER_FIELDS),
            [(host, *c.values()) for host, c in sorted(counters.items())],
        )
        added = ", ".join(f"{f} = m.{f} + excluded.{f}" for f in MINUTE_FIELDS[:-1])
        await db.executemany(
            "INSERT INTO host_minutes AS m VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            f" ON CONFLICT (host, minute) DO UPDATE SET {added},"
            " latency_max_ms = greatest(m.latency_max_ms, excluded.latency_max_ms)",
            [
                (host, minute, *c.values()[: len(MINUTE_FIELDS)])
                for (host, minute), c in sorted(minutes.items())
            ],
        )

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        async with self._transaction("cached_robots") as db:
            rows = await db.fetch(
                "SELECT origin, fetched_at, status, body, crawl_delay FROM robots_txt"
                " WHERE origin = ANY($1::text[])",
                list(origins),
            )
        return [Verdict(*row) for row in rows]

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, before: float, batch: int = 5000) -> tuple[int, list[str]]:
        """Delete finished jobs, results and minute rows older than `before`, a batch per
        transaction; (rows deleted, bodies no result names any more)."""
        deleted, orphans = 0, []
        while True:
            async with self._transaction("prune") as db:
                rows = await db.fetch(
                    "DELETE FROM results WHERE job_id IN (SELECT job_id FROM results"
                    " WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)"
                    " RETURNING job_id, body_sha256",
                    before,
                    batch,
                )
                await db.execute(
                    "DELETE FROM jobs WHERE id = ANY($1::bigint[]) AND state IN ('done', 'failed')",
                    [row[0] for row in rows],
                )
                shas = sorted({row[1] for row in rows if row[1]})
                if shas:
                    named = await db.fetch(
                        "SELECT DISTINCT body_sha256 FROM results"
                        " WHERE body_sha256 = ANY($1::text[])",
                        shas,
                    )
                    orphans.extend(sorted(set(shas) - {row[0] for row in named}))
                status = await db.execute(
                    "DELETE FROM host_minutes WHERE minute < $1", int(before // 60)
                )
                deleted += len(rows) + row_count(status)
            if len(rows) < batch:
                return deleted, orphans
            await asyncio.sleep(0)
