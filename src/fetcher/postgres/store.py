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

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, suppress

import asyncpg
import orjson

from fetcher.batch import Batch, Pruned, write
from fetcher.clocks import Clocks
from fetcher.daemons import new_owner
from fetcher.errors import StoreUnavailable
from fetcher.jobqueue import Delivery, Once, Redrive, Settled
from fetcher.locations import masked
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
from fetcher.policy import carried_on
from fetcher.postgres import outbox, retention, runs, submits
from fetcher.postgres.connection import (
    Channel,
    commits_shard,
    connect,
    fold_shards,
    listen,
    row_count,
    shards_of,
    unavailable,
)
from fetcher.postgres.leases import HostLeases
from fetcher.postgres.schema import migrate
from fetcher.postgres.tables import PostgresTables
from fetcher.recurrence import recurrence_of
from fetcher.urls import stored_target

__all__ = ["PostgresQueue"]


class PostgresQueue:
    """The queue, the counters and the host leases, as a daemon (or `fetcher submit`) uses them."""

    def __init__(
        self,
        url: str,
        connection: asyncpg.Connection,
        owner: str,
        *,
        lock_s: float,
        lease_s: float,
        clocks: Clocks,
        webhook_url: str | None = None,
    ) -> None:
        self._url = url
        self.owner = owner
        self._webhook = webhook_url  # FETCHER_WEBHOOK_URL: told of the jobs that name none
        self._wall = clocks.wall
        # Two connections, each one transaction at a time under its lock: the batch commits
        # (`record`: above all the read-modify-write of the hosts' counters, which awaits
        # between the read and the write) go on beside the claims and leases, never behind them.
        # Each counts jobs in a shard of its own: were they one, a claim's trigger and a
        # commit's would wait on each other's count rows while holding the host rows
        self._main = Channel(url, owner, lock_s, connection)
        self._commits = Channel(url, commits_shard(owner), lock_s)
        self._leases = HostLeases(owner, lease_s, clocks)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        busy_timeout_s: float = 10.0,
        lease_s: float = 90.0,
        clocks: Clocks | None = None,
        webhook_url: str | None = None,
    ) -> PostgresQueue:
        owner = new_owner()
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
        return cls(
            url,
            connection,
            owner,
            lock_s=busy_timeout_s,
            lease_s=lease_s,
            clocks=clocks or Clocks(),
            webhook_url=webhook_url,
        )

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

    async def submit(self, jobs: Sequence[JobRequest]) -> list[Submitted]:
        """Queue `jobs` in one transaction; for each, its new id, or the id of the same request
        already queued, retrying or running (`fetcher.postgres.submits`)."""
        async with self._transaction("submit") as db:
            return await submits.submit(db, jobs, self._wall())

    async def cancel(self, ids: Sequence[int]) -> dict[int, JobState]:
        """Cancel jobs: a queued or retrying one ends `cancelled` now, a running one after its
        current request; the state each known job was in before."""
        async with self._transaction("cancel") as db:
            return await submits.cancel(db, ids, self.owner, self._wall(), self._webhook)

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

    async def hosts_with_queued(self, after: str, limit: int) -> HostWalk:
        """Up to `limit` hosts this daemon holds with queued jobs, in key order after `after`;
        hosts it is handing back are left out."""
        async with self._transaction("hosts_with_queued") as db:
            rows = await db.fetch(
                "SELECT host FROM hosts WHERE owner = $1 AND backlog > 0 AND host > $2"
                " AND NOT host = ANY($4::text[]) ORDER BY host LIMIT $3",
                self.owner,
                after,
                limit + 1,
                list(self._leases.surrender),
            )
        page = [row[0] for row in rows[:limit]]
        return HostWalk(
            [host for host in page if self._leases.holds(host)],
            page[-1] if len(rows) > limit else None,
        )

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Up to n queued jobs for each (host, n) this daemon holds, the highest priority
        first, then the oldest, each stamped with the host's epoch; with their requests and
        validators."""
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
                        ORDER BY priority DESC, id LIMIT w.n FOR UPDATE SKIP LOCKED
                    ) AS j
                )
                UPDATE jobs SET state = 'running', lease_owner = $3, lease_epoch = picked.epoch,
                    updated_at = $4
                FROM picked WHERE jobs.id = picked.id
                RETURNING jobs.id, jobs.url, jobs.host, jobs.attempts, jobs.resume_url,
                    jobs.hops, jobs.lease_epoch, jobs.method, jobs.resume_method, jobs.priority,
                    jobs.max_attempts, jobs.timeout_s, jobs.retry, jobs.every_s, jobs.adaptive,
                    jobs.min_every_s, jobs.max_every_s, jobs.last_sha256
                """,
                [h for h, _ in wants],
                [n for _, n in wants],
                self.owner,
                self._wall(),
            )
            jobs = [_claimed(row) for row in rows]
            for row in rows:
                self._leases.claimed(row["id"], row["host"], row["lease_epoch"])
            if jobs:
                await self._attach(db, jobs, {r["id"] for r in rows if r["resume_url"]})
        jobs.sort(key=lambda job: (job.host, -job.priority, job.id))
        return jobs

    async def _attach(self, db: asyncpg.Connection, jobs: list[Job], moved: set[int]) -> None:
        """The requests of the jobs that carry one (as a moved job goes on with it), and the
        validators of their URLs."""
        requests = {
            row[0]: row[1:]
            for row in await db.fetch(
                "SELECT job_id, headers, body FROM job_requests WHERE job_id = ANY($1::bigint[])",
                [job.id for job in jobs],
            )
        }
        kept = await db.fetch(
            "SELECT url, etag, last_modified, body_sha256, body_path FROM validators"
            " WHERE url = ANY($1::text[])",
            [job.url for job in jobs if job.method == "GET" and job.id not in moved],
        )
        validators = {row[0]: Validators(*row[1:]) for row in kept}
        for job in jobs:
            if job.id in requests:
                headers, body = requests[job.id]
                job.headers = tuple(map(tuple, orjson.loads(headers)))
                job.body = body
            if job.id in moved:  # past a redirect to another origin: as policy.redirected
                job.headers, job.body = carried_on(job)
            job.validators = validators.get(job.url)

    async def promote_due(self) -> int:
        async with self._transaction("promote_due") as db:
            return await runs.promote_due(db, self._wall())

    async def waiting_runs(self) -> int:
        async with self._transaction("waiting_runs") as db:
            return await runs.waiting_runs(db)

    async def redrive(self, which: Redrive, *, dry_run: bool = False) -> int:
        async with self._transaction("redrive") as db:
            return await runs.redrive(db, which, self._wall(), dry_run)

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

    async def release_all(self, rates: Mapping[str, HostRate]) -> int:
        """Every job this daemon still holds goes back to the queue; every host it holds is
        handed back at once, with its schedule, to whichever daemon acquires it next."""
        async with self._transaction("release_all") as db:
            status = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
                " updated_at = $2 WHERE state = 'running' AND lease_owner = $1",
                self.owner,
                self._wall(),
            )
            await self._leases.release_all(db, rates)
        return row_count(status)

    async def unregister(self) -> None:
        async with self._transaction("unregister") as db:
            await db.execute("DELETE FROM daemons WHERE id = $1", self.owner)

    async def counts(self) -> dict[str, int]:
        async with self._transaction("counts") as db:
            rows = await db.fetch("SELECT state, jobs FROM queue")
        return {row[0]: int(row[1]) for row in rows}

    # -- outcomes and counters -----------------------------------------------------------------

    async def record(self, batch: Batch) -> None:
        """Commit a batch in one transaction. The host rows of its jobs and requests are locked
        in host order first; an outcome counts only if its job was claimed under the epoch its
        host still has with this daemon, and a request only if its host is this daemon's or
        one it never held (a hop elsewhere); the rest changes nothing."""
        leases = self._leases
        async with self._commits.transaction("record") as db:
            mine = await leases.lock(db, leases.hosts_of(batch.outcomes) | batch.hosts)
            kept = batch.only(
                outcome=lambda o: leases.still_mine(o.job_id, mine),
                host=lambda host: leases.counts(host, mine),
                paused=lambda host: host in mine,
            )
            await write(PostgresTables(db, self.owner, self._wall(), self._webhook), kept)
        leases.settled(batch.outcomes)  # committed, or refused for good

    async def cached_robots(self, origins: Sequence[str]) -> list[Verdict]:
        async with self._transaction("cached_robots") as db:
            rows = await db.fetch(
                "SELECT origin, fetched_at, status, body, crawl_delay FROM robots_txt"
                " WHERE origin = ANY($1::text[])",
                list(origins),
            )
        return [Verdict(*row) for row in rows]

    # -- retention ---------------------------------------------------------------------------

    async def prune(self, before: float, limit: int) -> Pruned:
        async with self._transaction("prune") as db:
            return await retention.prune(db, before, limit)

    async def expire(self, now: float) -> int:
        async with self._transaction("expire") as db:
            return await retention.expire(db, now)

    # -- the service (fetcher.postgres.submits, .outbox, .connection.listen) --------------------

    async def submit_once(self, jobs: Sequence[JobRequest], once: Once) -> tuple[str, bool]:
        async with self._transaction("submit") as db:
            return await submits.submit_once(db, jobs, self._wall(), once)

    async def claim_webhooks(self, limit: int, lease_s: float) -> list[Delivery]:
        async with self._transaction("claim_webhooks") as db:
            return await outbox.claim(db, self.owner, self._wall(), limit, lease_s)

    async def settle_webhooks(self, settled: Sequence[Settled]) -> None:
        async with self._transaction("settle_webhooks") as db:
            await outbox.settle(db, self._wall(), settled)

    async def watch_results(self, wake: Callable[[], None]) -> None:
        await listen(self._url, "fetcher_results", wake)


def _claimed(row: asyncpg.Record) -> Job:
    method = row["resume_method"] or row["method"]
    return Job(
        row["id"], row["url"], row["host"], row["attempts"],
        stored_target(row["resume_url"] or row["url"], row["host"]), hops=row["hops"],
        method=method, priority=row["priority"], max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"], retry=row["retry"], first_method=row["method"],
        recurrence=recurrence_of(
            row["every_s"], row["adaptive"], row["min_every_s"], row["max_every_s"]
        ),
        last_sha256=row["last_sha256"],
    )  # fmt: skip
