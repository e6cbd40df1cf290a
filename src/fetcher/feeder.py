"""Feeding the scheduler: claim queued jobs host by host while the daemon has room for them.

A host holds only a few seconds' worth of jobs in memory, so a slow host's backlog never
crowds out the others, and the room of one walk over the hosts is shared among them, so the
slots go to many hosts at once rather than to the first few (which would then open a
connection for every slot).

With several daemons, the hosts themselves come and go: at the start of each walk the feeder
hands back the hosts it holds with nothing left to do and acquires hosts with queued jobs that
no daemon holds, as many as it has room for (`turn_hosts`); the walk then claims from its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter

from fetcher.clocks import Clocks
from fetcher.errors import StoreUnavailable
from fetcher.guarded import GuardedQueue
from fetcher.limits import Limits
from fetcher.log import get_logger
from fetcher.model import Job
from fetcher.robots import RobotsGate, origin_of
from fetcher.scheduler import Scheduler
from fetcher.supervisor import wait_set

__all__ = ["Feeder", "allot"]

_log = get_logger("fetcher.feeder")
WALK_HOSTS = 64
ACQUIRE_HOSTS = 256  # hosts acquired at most at a time (several daemons)
_TURN_EVERY_S = 0.25  # hosts are handed back and acquired at most this often
_IDLE_POLL_S = 0.5


class Feeder:
    """Claims jobs into the scheduler and counts, per host, the jobs the daemon holds."""

    def __init__(
        self,
        queue: GuardedQueue,
        scheduler: Scheduler,
        limits: Limits,
        *,
        robots: RobotsGate | None = None,
        lease_s: float,
        max_held: int,
        clocks: Clocks,
    ) -> None:
        self._queue = queue
        self._scheduler = scheduler
        self._limits = limits
        self._clocks = clocks
        self._robots = robots
        self._lease_s = lease_s
        self._max_held = max_held
        self.held: Counter[str] = Counter()  # host (as queued) → jobs claimed, not yet settled
        self._held_total = 0
        # hosts whose last claim got all it asked for: more may be queued, and the feeder will
        # come back for them while they hold jobs
        self._refilled: set[str] = set()
        self._room_freed = asyncio.Event()
        self._turned_at = -math.inf
        self._more_hosts = False  # the last turn acquired all it asked for: more may wait

    def settled(self, job: Job) -> None:
        """`job` left memory (its outcome is with the recorder): its host may hold another."""
        self.held[job.host] -= 1
        self._held_total -= 1
        if self.held[job.host] <= 0:
            del self.held[job.host]
            self._refilled.discard(job.host)
        self._room_freed.set()

    def wake(self) -> None:
        """Something may be claimable (retries came due, the daemon is stopping)."""
        self._room_freed.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim until `stopping` is set (a store that is away then is not waited for: the
        queue gives up only then)."""
        with contextlib.suppress(StoreUnavailable):
            await self._feed(stopping)
        assert stopping.is_set()

    async def _feed(self, stopping: asyncio.Event) -> None:
        cursor = ""
        claimed_this_walk = 0
        while not stopping.is_set():
            room = self._max_held - self._held_total
            if not cursor:
                await self._turn_hosts(room)
            hosts: list[str] = []
            resume_after: str | None = None
            if room > 0:
                hosts, resume_after = await self._queue.hosts_with_queued(cursor, WALK_HOSTS)
            wants = allot(room, [(host, self._host_room(host)) for host in hosts])
            room -= sum(n for _, n in wants)
            if wants:
                claimed_this_walk += await self._claim(wants)
            wrapped = resume_after is None
            cursor = resume_after or ""
            if room <= 0 or (wrapped and claimed_this_walk == 0 and not self._more_hosts):
                self._room_freed.clear()  # a wake while stopping would be lost here: checked
                if not stopping.is_set():
                    await wait_set(self._room_freed, _IDLE_POLL_S)
            if wrapped:
                claimed_this_walk = 0

    async def _turn_hosts(self, room: int) -> None:
        """Hand back the hosts held with nothing to do (with their schedules); acquire hosts
        with queued jobs for the room there is, each with the schedule its last holder left.
        At most every _TURN_EVERY_S, unless the last turn got all it asked for."""
        now = self._clocks.monotonic()
        if now - self._turned_at < _TURN_EVERY_S and not self._more_hosts:
            return
        self._turned_at = now
        idle = {
            key: self._limits.rate_of(key)
            for key in self._queue.held_hosts()
            if not self.held[key]
            and not self._scheduler.has_pending(key)
            and not self._limits.in_flight(key)
        }
        want = min(ACQUIRE_HOSTS, room)
        if not idle and want <= 0:
            self._more_hosts = False
            return
        leases = await self._queue.turn_hosts(idle, want)
        # all it asked for came: turn again at the next walk, without waiting (many hosts with
        # a job or two each); fewer came, and the next turn waits its interval
        self._more_hosts = len(leases) >= want > 0
        now_wall = self._clocks.wall()
        paused = {}
        for lease in leases:
            self._limits.resume(lease.host, lease.rate)
            if lease.rate.paused_until > now_wall:
                paused[lease.host] = seconds = lease.rate.paused_until - now_wall
                _log.debug("host.paused", host=lease.host, seconds=round(seconds, 3), why="handed")
        if paused:  # a Retry-After or 429 pause the host's last holder (or run) committed
            _log.info(
                "hosts.pauses_restored",
                hosts=len(paused),
                longest_s=round(max(paused.values()), 3),
            )

    async def _claim(self, wants: list[tuple[str, int]]) -> int:
        jobs = await self._queue.claim(wants, self._lease_s)
        if self._robots is not None and jobs:
            await self._load_robots(jobs)
        got: Counter[str] = Counter()
        for job in jobs:
            got[job.host] += 1
            self._scheduler.add(job)
        self.held.update(got)
        self._held_total += len(jobs)
        for host, wanted in wants:
            if got[host] >= wanted:
                self._refilled.add(host)
            else:
                self._refilled.discard(host)
        return len(jobs)

    async def _load_robots(self, jobs: list[Job]) -> None:
        """The stored robots.txt verdicts of origins met for the first time, before their jobs
        reach the scheduler (a verdict fetched before a restart is not fetched again)."""
        assert self._robots is not None
        new = self._robots.unknown(dict.fromkeys(origin_of(job.target) for job in jobs))
        if new:
            self._robots.load(new, await self._queue.cached_robots(new))

    def refilling(self, host: str) -> bool:
        """Whether the feeder is still bringing in jobs for `host` (its last claim was full,
        and it holds some now)."""
        return host in self._refilled

    def _host_room(self, host: str) -> int:
        """Jobs `host` may still hold: about two seconds' worth. A host without a rate limit
        gets its in-flight cap three times over (and its burst); a rate-limited one its burst
        and two seconds of its rate, whatever its cap (a host at 2/s never uses 4 places: the
        jobs are better held for other hosts)."""
        limits = self._limits.limits_for(host)
        if limits.rate == 0:
            wanted = 3 * limits.concurrency + limits.burst
        else:
            wanted = limits.burst + math.ceil(2 * limits.rate)
        return min(wanted, 1000) - self.held[host]


def allot(room: int, hosts: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Split `room` (jobs the daemon may still hold) among `hosts`, each (host, room it has
    left): an equal share each, never more than a host's own room."""
    share = math.ceil(room / len(hosts)) if hosts else 0
    wants = []
    for host, own in hosts:
        n = min(own, share, room)
        if n > 0:
            wants.append((host, n))
            room -= n
    return wants
