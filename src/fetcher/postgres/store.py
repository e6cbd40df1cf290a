"""The daemon's side of the PostgreSQL queue (`JobQueue` of `fetcher.jobqueue`): host leases,
claims, outcomes and counters, in batches. Several daemons share it.

A host is held by one daemon at a time, under a lease on the database's clock (`hosts.owner`,
`epoch`, `lease_until`):
- acquire: free or expired hosts with queued jobs, ready first, `FOR UPDATE SKIP LOCKED`; the
  epoch goes up by one; a host taken from a daemon whose lease ran out starts its schedule no
  sooner than that lease's end, and that daemon's running jobs there go back to the queue.
- self-fence: this process knows each lease's end on its own monotonic clock, counted from
  before the statement that granted it was sent (so never later than the database's); the
  scheduler starts a request only if it ends before then (`lease_end`).
- renew: all held hosts in one statement every lease/4; a host missing from the answer is lost.
- commit: `record` locks the batch's host rows in host order, keeps only the outcomes of jobs
  claimed under the epoch the host still has, and adds the batch's requests to the counters
  read under that lock: the seed's read-modify-write, with the row lock as the distributed lock
  and `_lock` (one connection, one transaction at a time) as the daemon's own.
- release: hosts with nothing left to do, hosts over this daemon's fair share, and every host
  at shutdown, each with the rate schedule it leaves for the next holder.

The connection's errors that pass (the server restarting, a lock held past the busy timeout, a
deadlock broken, the disk full) leave as `StoreUnavailable`; a broken connection is opened
again at the next call. What the daemon holds stays in memory until it commits.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass

import asyncpg

from fetcher.counters import COUNTER_FIELDS, MINUTE_FIELDS, Tally, tally
from fetcher.errors import StoreUnavailable
from fetcher.jobqueue import HostLease, HostRate
from fetcher.locations import masked
from fetcher.model import Exchange, Job, JobState, Outcome, Validators
from fetcher.postgres.schema import migrate
from fetcher.robots import Verdict
from fetcher.urls import Target, stored_target

__all__ = ["PostgresQueue", "connect", "unavailable"]

_FINAL = (JobState.DONE, JobState.FAILED)
# SQLSTATE classes of trouble that passes: connection exception, transaction rollback
# (deadlock, serialization), insufficient resources (disk full, too many connections),
# operator intervention (shutdown, restart, cancelled); and lock_not_available
_PASSING = ("08", "40", "53", "57")
_NO_ANSWER_S = 60.0  # a statement's answer waited for past the lock timeout
_SHARE_EVERY_S = 2.0  # how often the fair share of hosts is counted again, over many hosts
_RAMP_S = 2.0  # after registering, a daemon acquires its share a quarter at a time for this long
_RAMP_HOSTS = 4  # … but this many hosts at once at least
_COUNT_ALWAYS_BELOW = 10_000  # hosts with work: below this, the share is counted every turn


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` is trouble that passes (the server away, a lock, a deadlock…)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _PASSING or state == "55P03"
    return isinstance(exc, OSError | asyncpg.InterfaceError | TimeoutError)


async def connect(url: str, *, shard: str, timeout_s: float) -> asyncpg.Connection:
    """A connection whose transactions count jobs in `shard`, and whose lock waits end after
    `timeout_s` (as SQLite's busy timeout). A statement that gets no answer for a minute more
    (a server cut off without a reset) counts as the server away, and the connection is
    opened again."""
    return await asyncpg.connect(
        url,
        timeout=timeout_s,
        command_timeout=timeout_s + _NO_ANSWER_S,
        server_settings={
            "fetcher.shard": shard,
            "lock_timeout": f"{round(timeout_s * 1000)}ms",
            "application_name": "fetcher",
        },
    )


class _Channel:
    """One connection and the lock that gives it to one transaction at a time; opened when
    first needed, and again after it broke."""

    def __init__(
        self, url: str, shard: str, lock_s: float, connection: asyncpg.Connection | None = None
    ) -> None:
        self._url = url
        self._shard = shard
        self._lock_s = lock_s
        self.db = connection
        self.lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self, operation: str) -> AsyncIterator[asyncpg.Connection]:
        """One transaction under `lock`; trouble that passes becomes `StoreUnavailable`."""
        async with self.lock:
            try:
                if self.db is None or self.db.is_closed():
                    self.db = await connect(self._url, shard=self._shard, timeout_s=self._lock_s)
                async with self.db.transaction():
                    yield self.db
            except Exception as exc:
                if not unavailable(exc):
                    raise
                if not isinstance(exc, asyncpg.PostgresError) or exc.sqlstate[:2] in ("08", "57"):
                    self.drop()
                raise StoreUnavailable(operation, str(exc) or type(exc).__name__) from exc

    def drop(self) -> None:
        if self.db is not None:
            self.db.terminate()
            self.db = None

    async def close(self) -> None:
        if self.db is not None:
            with suppress(Exception):
                await self.db.close()
            self.db = None


@dataclass(slots=True)
class _Held:
    """A host this daemon holds: the epoch it was acquired with, and when (on this process's
    monotonic clock) the lease ends at the latest."""

    epoch: int
    ends_at: float


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
        self._main = _Channel(url, owner, lock_s, connection)
        self._commits = _Channel(url, _commits_shard(owner), lock_s)
        self._lease_s = lease_s
        self._held: dict[str, _Held] = {}
        self._lost: set[str] = set()  # hosts whose lease another took: their requests don't count
        self._claimed: dict[int, tuple[str, int]] = {}  # job → (host, epoch), until committed
        self._claimed_at: Counter[str] = Counter()  # host → its jobs in `_claimed`
        self._surrender: set[str] = set()  # held hosts over the fair share: handed back when idle
        self._share: float = math.inf  # hosts this daemon may hold
        self._share_at = -math.inf
        self._busy = 0  # hosts with work or held, at the last count
        self._registered_at = -math.inf

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
                await self._fold_shards(db, [self.owner, _commits_shard(self.owner)])
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
        return int(status.rsplit(" ", 1)[1])

    # -- host leases ----------------------------------------------------------------------

    def lease_end(self, host: str) -> float:
        held = self._held.get(host)
        return -math.inf if held is None else held.ends_at

    def held_hosts(self) -> Collection[str]:
        return list(self._held)

    async def turn_hosts(self, release: Mapping[str, HostRate], want: int) -> list[HostLease]:
        """Hand back the hosts in `release` that have nothing queued (or that are over the
        fair share) and whose outcomes are all committed; then acquire up to `want` hosts with
        queued jobs, within the fair share: hosts with work ÷ live daemons."""
        handed = [
            (host, rate)
            for host, rate in release.items()
            if host in self._held and not self._claimed_at[host]
        ]
        leases: list[HostLease] = []
        async with self._transaction("turn_hosts") as db:
            if handed:
                rows = await db.fetch(
                    "WITH x AS (SELECT host FROM hosts WHERE host = ANY($1::text[])"
                    " ORDER BY host FOR UPDATE)"  # in host order, as every writer: no deadlock
                    " UPDATE hosts SET owner = NULL, lease_until = 0, tat = v.tat,"
                    " paused_until = greatest(hosts.paused_until, v.paused),"
                    " next_ready = greatest(v.tat, v.paused, hosts.paused_until)"
                    " FROM x, unnest($1::text[], $2::float8[], $3::float8[])"
                    " AS v(host, tat, paused)"
                    " WHERE hosts.host = x.host AND hosts.host = v.host AND hosts.owner = $4"
                    " AND (hosts.backlog = 0 OR hosts.host = ANY($5::text[]))"
                    " RETURNING hosts.host",
                    [h for h, _ in handed],
                    [r.tat for _, r in handed],
                    [r.paused_until for _, r in handed],
                    self.owner,
                    [h for h, _ in handed if h in self._surrender],
                )
                for row in rows:
                    self._held.pop(row[0], None)
                    self._surrender.discard(row[0])
            await self._count_share(db)
            want = int(min(want, self._share - len(self._held), self._step()))
            if want > 0:
                leases = await self._acquire(db, want)
        return leases

    def _step(self) -> float:
        """Hosts to acquire at most in one turn. In the daemon's first seconds, a quarter of its
        share (4 at least): daemons started together register a moment apart, and the first
        would otherwise take every host before the others are counted."""
        if time.monotonic() - self._registered_at < _RAMP_S:
            return max(_RAMP_HOSTS, math.ceil(self._share / 4))
        return self._share

    async def _count_share(self, db: asyncpg.Connection) -> None:
        """The hosts a daemon may hold: hosts with work ÷ live daemons (counted at every turn,
        or every few seconds over many hosts); a daemon holding more marks the excess to hand
        back once idle."""
        now = time.monotonic()
        if now - self._share_at < _SHARE_EVERY_S and self._busy > _COUNT_ALWAYS_BELOW:
            return
        self._share_at = now
        row = await db.fetchrow(
            "SELECT (SELECT count(*) FROM daemons WHERE heartbeat_at > fetcher_now() - $1),"
            " (SELECT count(*) FROM hosts WHERE backlog > 0)"
            " + (SELECT count(*) FROM hosts WHERE owner IS NOT NULL AND backlog = 0)",
            self._lease_s,
        )
        assert row is not None
        live, busy = row
        self._busy = busy
        share = max(1, math.ceil(busy / max(live, 1)))
        self._share = share
        excess = len(self._held) - share
        self._surrender = set(sorted(self._held)[-excess:]) if excess > 0 else set()

    async def _acquire(self, db: asyncpg.Connection, want: int) -> list[HostLease]:
        sent = time.monotonic()
        rows = await db.fetch(
            """
            WITH picked AS (
                SELECT host, owner AS old_owner, lease_until AS old_until FROM hosts
                WHERE backlog > 0 AND (owner IS NULL OR lease_until < fetcher_now())
                ORDER BY next_ready, host LIMIT $2 FOR UPDATE SKIP LOCKED
            )
            UPDATE hosts SET owner = $1, epoch = hosts.epoch + 1,
                lease_until = fetcher_now() + $3,
                tat = greatest(hosts.tat, picked.old_until)
            FROM picked WHERE hosts.host = picked.host
            RETURNING hosts.host, hosts.epoch, hosts.tat, hosts.paused_until, picked.old_owner
            """,  # a lease that ran out (0 if handed back): no request before its end
            self.owner,
            want,
            self._lease_s,
        )
        taken = [row["host"] for row in rows if row["old_owner"] is not None]
        await self._requeue_at(db, taken)  # its holder's requests have all ended by now
        leases = []
        for row in rows:
            self._held[row["host"]] = _Held(row["epoch"], sent + self._lease_s)
            self._lost.discard(row["host"])
            leases.append(HostLease(row["host"], HostRate(row["tat"], row["paused_until"])))
        return leases

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
                list(self._surrender),
            )
        return [row[0] for row in rows if row[0] in self._held]

    async def claim(self, wants: Sequence[tuple[str, int]], lease_s: float) -> list[Job]:
        """Up to n queued jobs for each (host, n) this daemon holds, oldest first, each stamped
        with the host's epoch; with their validators."""
        wants = [(host, n) for host, n in wants if host in self._held]
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
                self._claimed[row["id"]] = (row["host"], row["lease_epoch"])
                self._claimed_at[row["host"]] += 1
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
        return int(status.rsplit(" ", 1)[1])

    # -- daemons ----------------------------------------------------------------------------

    async def register(self) -> int:
        """Announce this daemon; free at once what dead daemons on this machine held (their
        process is gone, so none of their requests is in flight). Others' leases run out."""
        self._registered_at = time.monotonic()
        async with self._transaction("register") as db:
            rows = await db.fetch(
                "SELECT id, pid FROM daemons WHERE hostname = $1", socket.gethostname()
            )
            dead = [row["id"] for row in rows if not _alive(row["pid"])]
            await db.execute(
                "INSERT INTO daemons VALUES ($1, $2, $3, fetcher_now(), fetcher_now())",
                self.owner,
                os.getpid(),
                socket.gethostname(),
            )
            return await self._bury(db, dead)

    async def heartbeat(self, lease_s: float) -> int:
        """Renew every held host in one statement (a host missing from the answer is lost);
        free hosts whose leases ran out, and take back the jobs whose claimer lost its host."""
        self._lease_s = lease_s
        async with self._transaction("heartbeat") as db:
            await db.execute(  # its row is back if another daemon took it for dead meanwhile
                "INSERT INTO daemons VALUES ($1, $2, $3, fetcher_now(), fetcher_now())"
                " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                self.owner,
                os.getpid(),
                socket.gethostname(),
            )
            sent = time.monotonic()
            rows = await db.fetch(
                "WITH x AS (SELECT host FROM hosts WHERE owner = $1 ORDER BY host FOR UPDATE)"
                " UPDATE hosts SET lease_until = fetcher_now() + $2 FROM x"
                " WHERE hosts.host = x.host RETURNING hosts.host, hosts.epoch",
                self.owner,
                lease_s,
            )
            renewed = {row["host"]: row["epoch"] for row in rows}
            for host, held in list(self._held.items()):
                if renewed.get(host) == held.epoch:
                    held.ends_at = sent + lease_s
                else:
                    self._lose(host)
            stale = await db.fetch(
                "DELETE FROM daemons WHERE heartbeat_at < fetcher_now() - $1 AND id <> $2"
                " RETURNING id",
                lease_s,
                self.owner,
            )
            await self._fold_shards(db, _shards_of(row[0] for row in stale))
            # hosts whose lease ran out are freed (a stale daemon's hosts only once their own
            # leases end: it may still be sending, inside them)
            await db.execute(
                "WITH x AS (SELECT host FROM hosts WHERE owner IS NOT NULL AND owner <> $1"
                " AND lease_until < fetcher_now() ORDER BY host FOR UPDATE SKIP LOCKED)"
                " UPDATE hosts SET owner = NULL FROM x WHERE hosts.host = x.host",
                self.owner,
            )
            return await self._requeue_orphans(db)

    async def _requeue_orphans(self, db: asyncpg.Connection) -> int:
        """Running jobs whose claimer no longer holds their host (its lease ran out, or was
        taken over: every request it started there has ended) go back to the queue."""
        status = await db.execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
            " updated_at = $1 FROM hosts"
            " WHERE jobs.state = 'running' AND hosts.host = jobs.host"
            " AND (hosts.owner IS DISTINCT FROM jobs.lease_owner"
            " OR hosts.epoch IS DISTINCT FROM jobs.lease_epoch)",
            time.time(),
        )
        return int(status.rsplit(" ", 1)[1])

    def _lose(self, host: str) -> None:
        """The lease on `host` was lost: its jobs here are given up (the next holder takes
        them back), and what this daemon commits about it later changes nothing."""
        self._held.pop(host, None)
        self._lost.add(host)
        self._surrender.discard(host)
        for job_id in [i for i, (h, _) in self._claimed.items() if h == host]:
            del self._claimed[job_id]
        self._claimed_at.pop(host, None)

    async def _bury(self, db: asyncpg.Connection, dead: list[str]) -> int:
        """Daemons of this machine whose process is gone (none of their requests can be in
        flight): their rows go, their hosts are freed at once, their running jobs go back to
        the queue, their job counts join the shared shard. How many jobs."""
        if not dead:
            return 0
        await db.execute("DELETE FROM daemons WHERE id = ANY($1::text[])", dead)
        await db.execute(
            "WITH x AS (SELECT host FROM hosts WHERE owner = ANY($1::text[]) ORDER BY host"
            " FOR UPDATE) UPDATE hosts SET owner = NULL, lease_until = 0 FROM x"
            " WHERE hosts.host = x.host",
            dead,
        )
        status = await db.execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
            " updated_at = $2 WHERE state = 'running' AND lease_owner = ANY($1::text[])",
            dead,
            time.time(),
        )
        await self._fold_shards(db, _shards_of(dead))
        return int(status.rsplit(" ", 1)[1])

    async def _requeue_at(self, db: asyncpg.Connection, hosts: list[str]) -> int:
        if not hosts:
            return 0
        status = await db.execute(
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
            " updated_at = $2 WHERE state = 'running' AND host = ANY($1::text[])",
            hosts,
            time.time(),
        )
        return int(status.rsplit(" ", 1)[1])

    @staticmethod
    async def _fold_shards(db: asyncpg.Connection, shards: list[str]) -> None:
        """Add the job counts of `shards` to the shared shard and drop their rows."""
        await db.execute(
            "WITH gone AS (DELETE FROM job_counts WHERE shard = ANY($1::text[])"
            " RETURNING state, n)"
            " INSERT INTO job_counts AS c (shard, state, n)"
            " SELECT 'shared', state, sum(n) FROM gone GROUP BY state"
            " ON CONFLICT (shard, state) DO UPDATE SET n = c.n + excluded.n",
            shards,
        )

    async def release_all(self, rates: Mapping[str, HostRate] | None = None) -> int:
        """Every job this daemon still holds goes back to the queue; every host it holds is
        handed back at once, with its schedule, to whichever daemon acquires it next."""
        rates = rates or {}
        hosts = sorted(self._held)
        async with self._transaction("release_all") as db:
            status = await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
                " updated_at = $2 WHERE state = 'running' AND lease_owner = $1",
                self.owner,
                time.time(),
            )
            if hosts:
                kept = [rates.get(host, HostRate()) for host in hosts]
                await db.execute(
                    "UPDATE hosts SET owner = NULL, lease_until = 0, tat = v.tat,"
                    " paused_until = greatest(hosts.paused_until, v.paused),"
                    " next_ready = greatest(v.tat, v.paused, hosts.paused_until)"
                    " FROM unnest($1::text[], $2::float8[], $3::float8[]) AS v(host, tat, paused)"
                    " WHERE hosts.host = v.host AND hosts.owner = $4",
                    hosts,
                    [r.tat for r in kept],
                    [r.paused_until for r in kept],
                    self.owner,
                )
        self._held.clear()
        self._claimed.clear()
        self._claimed_at.clear()
        return int(status.rsplit(" ", 1)[1])

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
            mine = await self._lock_hosts(db, outcomes, exchanges, pauses)
            kept = [o for o in outcomes if self._still_mine(o.job_id, mine)]
            counted = [e for e in exchanges if e.host in mine or e.host not in self._lost]
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
        for o in outcomes:  # committed, or refused for good: either way no longer this daemon's
            claimed = self._claimed.pop(o.job_id, None)
            if claimed is not None:
                self._claimed_at[claimed[0]] -= 1
                if self._claimed_at[claimed[0]] <= 0:
                    del self._claimed_at[claimed[0]]

    def _still_mine(self, job_id: int, mine: Mapping[str, int]) -> bool:
        """Whether job `job_id` was claimed under the epoch its host still has with this daemon."""
        claimed = self._claimed.get(job_id)
        return claimed is not None and mine.get(claimed[0]) == claimed[1]

    async def _lock_hosts(
        self,
        db: asyncpg.Connection,
        outcomes: Sequence[Outcome],
        exchanges: Sequence[Exchange],
        pauses: Mapping[str, float],
    ) -> dict[str, int]:
        """Lock the rows of every host the batch touches, in host order (no deadlock between
        daemons), creating the missing ones; those this daemon holds, with their epochs. A host
        it thought it held and does not is lost here, as at a renewal."""
        hosts = {e.host for e in exchanges} | set(pauses)
        hosts.update(self._claimed[o.job_id][0] for o in outcomes if o.job_id in self._claimed)
        hosts.update(o.moved_to.host_key for o in outcomes if o.moved_to is not None)
        if not hosts:
            return {}
        ordered = sorted(hosts)
        await db.execute(
            "INSERT INTO hosts (host) SELECT h FROM unnest($1::text[]) AS h ORDER BY h"
            " ON CONFLICT DO NOTHING",
            ordered,
        )
        rows = await db.fetch(
            "SELECT host, owner, epoch FROM hosts WHERE host = ANY($1::text[])"
            " ORDER BY host FOR UPDATE",
            ordered,
        )
        mine = {}
        for host, owner, epoch in rows:
            held = self._held.get(host)
            if owner == self.owner and (held is None or held.epoch == epoch):
                mine[host] = epoch
            elif held is not None:  # taken while this daemon thought it held it
                self._lose(host)
        return mine

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
                deleted += len(rows) + int(status.rsplit(" ", 1)[1])
            if len(rows) < batch:
                return deleted, orphans
            await asyncio.sleep(0)


def _commits_shard(owner: str) -> str:
    return f"{owner}.commits"


def _shards_of(daemons: Iterable[str]) -> list[str]:
    """The job-count shards of `daemons` (each has two: its two connections')."""
    return [shard for owner in daemons for shard in (owner, _commits_shard(owner))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
