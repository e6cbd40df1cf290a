"""Host leases on PostgreSQL: which hosts this daemon holds and until when, and the SQL that
acquires, renews, hands back and takes them over.

A host is held by one daemon at a time, under a lease on the database's clock (`hosts.owner`,
`epoch`, `lease_until`):
- acquire: free or expired hosts with queued jobs, ready first, `FOR UPDATE SKIP LOCKED`; the
  epoch goes up by one; the host's schedule starts no sooner than the end of a lease that ran
  out (its holder's last requests may not be in the stored schedule), and that holder's
  running jobs there go back to the queue.
- self-fence: this process knows each lease's end on its own monotonic clock, counted from
  before the statement that granted it was sent (so never later than the database's); the
  scheduler starts a request only if it ends before then (`lease_end`).
- renew: all held hosts in one statement every lease/4; a host missing from the answer is lost.
- commit: `lock` locks a batch's host rows in host order; only outcomes of jobs claimed under
  the epoch their host still has with this daemon count (`still_mine`).
- hand back: hosts with nothing queued, hosts over this daemon's fair share (hosts with work ÷
  live daemons) once idle, and every host at shutdown, each with the rate schedule it leaves.
- take over: a host whose lease ran out is freed by any daemon's renewal; running jobs whose
  claimer no longer holds their host go back to the queue (its requests there have ended).

Every statement that writes several host rows takes them in host order (or skips locked
ones): daemons never deadlock on them.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from fetcher.clocks import Clocks
from fetcher.daemons import dead_here, this_machine
from fetcher.model import HostLease, HostRate, Outcome
from fetcher.postgres.connection import fold_shards, row_count, shards_of

__all__ = ["HostLeases"]

_SHARE_EVERY_S = 2.0  # how often the fair share of hosts is counted again, over many hosts
_COUNT_ALWAYS_BELOW = 10_000  # hosts with work: below this, the share is counted every turn
_RAMP_S = 2.0  # after registering, a daemon acquires its share a quarter at a time for this long
_RAMP_HOSTS = 4  # … but this many hosts at once at least


@dataclass(slots=True)
class _Held:
    """A host this daemon holds: the epoch it was acquired with, and when (on this process's
    monotonic clock) the lease ends at the latest."""

    epoch: int
    ends_at: float


class HostLeases:
    """The hosts one daemon holds, the jobs it claimed under them, and the SQL of both."""

    def __init__(self, owner: str, lease_s: float, clocks: Clocks) -> None:
        self.owner = owner
        self._clock = clocks.monotonic  # a lease's end, as this process counts it
        self._wall = clocks.wall
        self._lease_s = lease_s
        self._held: dict[str, _Held] = {}
        self._lost: set[str] = set()  # hosts whose lease another took: their requests don't count
        self._claimed: dict[int, tuple[str, int]] = {}  # job → (host, epoch), until committed
        self._claimed_at: Counter[str] = Counter()  # host → its jobs in `_claimed`
        self.surrender: set[str] = set()  # held hosts over the fair share: handed back when idle
        self._share: float = math.inf  # hosts this daemon may hold
        self._share_at = -math.inf
        self._busy = 0  # hosts with work or held, at the last count
        self._registered_at = -math.inf

    # -- what the daemon asks -----------------------------------------------------------------

    def lease_end(self, host: str) -> float:
        held = self._held.get(host)
        return -math.inf if held is None else held.ends_at

    def held_hosts(self) -> list[str]:
        return list(self._held)

    def holds(self, host: str) -> bool:
        return host in self._held

    # -- jobs claimed under a lease, until their outcome is committed -------------------------

    def claimed(self, job_id: int, host: str, epoch: int) -> None:
        self._claimed[job_id] = (host, epoch)
        self._claimed_at[host] += 1

    def hosts_of(self, outcomes: Iterable[Outcome]) -> set[str]:
        """The hosts `outcomes`' jobs were claimed at (and those moved jobs go to)."""
        hosts = {self._claimed[o.job_id][0] for o in outcomes if o.job_id in self._claimed}
        hosts.update(o.moved_to.host_key for o in outcomes if o.moved_to is not None)
        return hosts

    def still_mine(self, job_id: int, mine: Mapping[str, int]) -> bool:
        """Whether job `job_id` was claimed under the epoch its host still has with this
        daemon (`mine`: host → epoch, as `lock` found them)."""
        claimed = self._claimed.get(job_id)
        return claimed is not None and mine.get(claimed[0]) == claimed[1]

    def counts(self, host: str, mine: Mapping[str, int]) -> bool:
        """Whether a request to `host` counts: the host is this daemon's, or one it never lost
        (a hop to a host it does not hold, a host it handed back since)."""
        return host in mine or host not in self._lost

    def settled(self, outcomes: Sequence[Outcome]) -> None:
        """`outcomes` were committed (or refused for good): their jobs are no longer held."""
        for o in outcomes:
            claimed = self._claimed.pop(o.job_id, None)
            if claimed is not None:
                self._claimed_at[claimed[0]] -= 1
                if self._claimed_at[claimed[0]] <= 0:
                    del self._claimed_at[claimed[0]]

    def _lose(self, host: str) -> None:
        """The lease on `host` was lost: its jobs here are given up (the next holder takes
        them back), and what this daemon commits about it later changes nothing."""
        self._held.pop(host, None)
        self._lost.add(host)
        self.surrender.discard(host)
        for job_id in [i for i, (h, _) in self._claimed.items() if h == host]:
            del self._claimed[job_id]
        self._claimed_at.pop(host, None)

    # -- the SQL ------------------------------------------------------------------------------

    async def lock(self, db: asyncpg.Connection, hosts: set[str]) -> dict[str, int]:
        """Lock the rows of `hosts` in host order, creating the missing ones; those this daemon
        holds, with their epochs. A host it thought it held and does not is lost here."""
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

    async def turn(
        self, db: asyncpg.Connection, release: Mapping[str, HostRate], want: int
    ) -> list[HostLease]:
        """Hand back the hosts in `release` that have nothing queued (or that are over the
        fair share) and whose outcomes are all committed; then acquire up to `want` hosts with
        queued jobs, within the fair share."""
        handed = {
            host: rate
            for host, rate in release.items()
            if host in self._held and not self._claimed_at[host]
        }
        for host in await self._hand_back(db, handed, idle_only=True):
            self._held.pop(host, None)
            self.surrender.discard(host)
        await self._count_share(db)
        want = int(min(want, self._share - len(self._held), self._step()))
        return await self._acquire(db, want) if want > 0 else []

    async def _hand_back(
        self, db: asyncpg.Connection, rates: Mapping[str, HostRate], *, idle_only: bool
    ) -> list[str]:
        """Free these hosts, each with the schedule it leaves (with `idle_only`, only those
        with nothing queued or over the share); the hosts freed."""
        if not rates:
            return []
        hosts = sorted(rates)
        rows = await db.fetch(
            "WITH x AS (SELECT host FROM hosts WHERE host = ANY($1::text[])"
            " ORDER BY host FOR UPDATE)"
            " UPDATE hosts SET owner = NULL, lease_until = 0, tat = v.tat,"
            " paused_until = greatest(hosts.paused_until, v.paused),"
            " next_ready = greatest(v.tat, v.paused, hosts.paused_until)"
            " FROM x JOIN unnest($1::text[], $2::float8[], $3::float8[]) AS v(host, tat, paused)"
            " ON v.host = x.host WHERE hosts.host = x.host AND hosts.owner = $4"
            " AND (NOT $5 OR hosts.backlog = 0 OR hosts.host = ANY($6::text[]))"
            " RETURNING hosts.host",
            hosts,
            [rates[h].tat for h in hosts],
            [rates[h].paused_until for h in hosts],
            self.owner,
            idle_only,
            [h for h in hosts if h in self.surrender],
        )
        return [row[0] for row in rows]

    def _step(self) -> float:
        """Hosts to acquire at most in one turn. In the daemon's first seconds, a quarter of its
        share (4 at least): daemons started together register a moment apart, and the first
        would otherwise take every host before the others are counted."""
        if self._clock() - self._registered_at < _RAMP_S:
            return max(_RAMP_HOSTS, math.ceil(self._share / 4))
        return self._share

    async def _count_share(self, db: asyncpg.Connection) -> None:
        """The hosts a daemon may hold: hosts with work ÷ live daemons (counted at every turn,
        or every few seconds over many hosts); a daemon holding more marks the excess to hand
        back once idle."""
        now = self._clock()
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
        self.surrender = set(sorted(self._held)[-excess:]) if excess > 0 else set()

    async def _acquire(self, db: asyncpg.Connection, want: int) -> list[HostLease]:
        sent = self._clock()
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
        if taken:  # its holder's requests there have all ended by now
            await db.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
                " updated_at = $2 WHERE state = 'running' AND host = ANY($1::text[])",
                taken,
                self._wall(),
            )
        leases = []
        for row in rows:
            self._held[row["host"]] = _Held(row["epoch"], sent + self._lease_s)
            self._lost.discard(row["host"])
            leases.append(HostLease(row["host"], HostRate(row["tat"], row["paused_until"])))
        return leases

    async def register(self, db: asyncpg.Connection) -> int:
        """Announce this daemon; free at once what dead daemons on this machine held (their
        process is gone, so none of their requests is in flight): their hosts, their running
        jobs (how many). Others' leases run out."""
        self._registered_at = self._clock()
        dead = dead_here(map(tuple, await db.fetch("SELECT id, pid, hostname FROM daemons")))
        await self._announce(db)
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
            self._wall(),
        )
        await fold_shards(db, shards_of(dead))
        return row_count(status)

    async def _announce(self, db: asyncpg.Connection) -> None:
        """This daemon's row, its heartbeat now (back if another took it for dead meanwhile)."""
        await db.execute(
            "INSERT INTO daemons VALUES ($1, $2, $3, fetcher_now(), fetcher_now())"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            self.owner,
            os.getpid(),
            this_machine(),
        )

    async def renew(self, db: asyncpg.Connection, lease_s: float) -> int:
        """Renew every held host in one statement (a host missing from the answer is lost);
        free hosts whose leases ran out, and take back the jobs whose claimer lost its host
        (how many)."""
        self._lease_s = lease_s
        await self._announce(db)
        sent = self._clock()
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
            "DELETE FROM daemons WHERE heartbeat_at < fetcher_now() - $1 AND id <> $2 RETURNING id",
            lease_s,
            self.owner,
        )
        await fold_shards(db, shards_of(row[0] for row in stale))
        # hosts whose lease ran out are freed (a stale daemon's hosts only once their own
        # leases end: it may still be sending, inside them)
        await db.execute(
            "WITH x AS (SELECT host FROM hosts WHERE owner IS NOT NULL AND owner <> $1"
            " AND lease_until < fetcher_now() ORDER BY host FOR UPDATE SKIP LOCKED)"
            " UPDATE hosts SET owner = NULL FROM x WHERE hosts.host = x.host",
            self.owner,
        )
        status = await db.execute(  # running jobs whose claimer no longer holds their host
            "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_epoch = NULL,"
            " updated_at = $1 FROM hosts"
            " WHERE jobs.state = 'running' AND hosts.host = jobs.host"
            " AND (hosts.owner IS DISTINCT FROM jobs.lease_owner"
            " OR hosts.epoch IS DISTINCT FROM jobs.lease_epoch)",
            self._wall(),
        )
        return row_count(status)

    async def release_all(self, db: asyncpg.Connection, rates: Mapping[str, HostRate]) -> None:
        """Hand back every host held, with its schedule (shutdown: nothing is in flight)."""
        await self._hand_back(
            db, {host: rates.get(host, HostRate()) for host in self._held}, idle_only=False
        )
        self._held.clear()
        self._claimed.clear()
        self._claimed_at.clear()
