"""Which job goes next: the claimed jobs of every host, handed out as their hosts get ready.

Each host keeps its jobs in a heap, the highest priority first, then the first come. Hosts wait
in a heap ordered by the time their limiter lets the next request start; once that time has
come, a host moves to the ready heap, ordered by the priority of its best job, then by when it
got ready. So the scheduler always hands out the job of the best-ranked host that is ready; a
slow, paused or rate-limited host never stands in front of a ready one, and when the global cap
is what limits, a ready host whose best job ranks higher goes first. A host whose origin's
robots.txt is not known yet hands out the fetch of robots.txt instead, and waits out of the
heaps until it is answered; a job its robots.txt disallows is handed to `refuse`, not out.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections.abc import Callable

from fetcher.limits import Limits
from fetcher.model import Job
from fetcher.robots import Gate, RobotsGate, origin_of, robots_target

__all__ = ["Permit", "Scheduler"]

FENCE_RECHECK_S = 0.25  # a host whose lease is too short for a request: looked at again after


class Permit:
    """A request's two places, taken together by `Scheduler.next_ready` and given back together
    by `release`: one of the global semaphore's and one of its host's in-flight places."""

    __slots__ = ("_scheduler", "host")

    def __init__(self, scheduler: Scheduler, host: str) -> None:
        self._scheduler: Scheduler | None = scheduler
        self.host = host

    def release(self) -> None:
        """Give both places back (once; a second call does nothing)."""
        if self._scheduler is not None:
            self._scheduler._finished(self.host)
            self._scheduler = None


class Scheduler:
    """The claimed jobs, one queue per host, and the heap of hosts by ready time."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float],
        *,
        robots: RobotsGate | None = None,
        refuse: Callable[[Job], None] | None = None,
        lease_end: Callable[[str], float] = lambda key: math.inf,
        reach_s: float = 0.0,
        lost: Callable[[Job], None] | None = None,
    ) -> None:
        self._limits = limits
        self._clock = clock
        # the site's rules: a host's next job goes only once its origin's robots.txt is known;
        # a job it disallows goes to `refuse` without a request (and without a token)
        self._robots = robots
        self._refuse = refuse or (lambda job: None)
        # the self-fence: a request to a host starts only if it ends (`reach_s` at most, the
        # whole-request deadline and a margin) before this daemon's lease on the host does
        self._lease_end = lease_end
        self._reach_s = reach_s
        self._lost = lost or (lambda job: None)
        self._pending: dict[str, list[tuple[int, int, Job]]] = {}  # (-priority, seq, job)
        self._waiting: list[tuple[float, int, str]] = []  # (ready at, seq, host)
        self._ready: list[tuple[int, int, str]] = []  # (-best priority, seq, host)
        self._rank: dict[str, int] = {}  # host in `_ready` → the priority its entry holds
        self._in_heap: set[str] = set()  # hosts in either heap
        self._seq = 0
        self._changed = asyncio.Event()
        self._closed = False
        self.pending = 0  # jobs waiting for their host
        self.in_flight = 0  # requests started and not yet finished (permits held)

    def add(self, job: Job) -> None:
        """A job whose next request goes to `job.target.host_key`."""
        key = job.target.host_key
        queue = self._pending.get(key)
        if queue is None:
            queue = self._pending[key] = []
        self._seq += 1
        heapq.heappush(queue, (-job.priority, self._seq, job))
        self.pending += 1
        rank = self._rank.get(key)
        if rank is not None and job.priority > rank:  # ready, and now with a better job
            self._make_ready(key)
        self._schedule(key)
        self._changed.set()

    def _finished(self, key: str) -> None:
        """A request to `key` ended (`Permit.release`): both its places are free again."""
        self.in_flight -= 1
        self._limits.slots.release()
        self._limits.host(key).finish()
        if self._pending.get(key):
            self._schedule(key)
            self._changed.set()

    def reschedule(self) -> None:
        """Limits changed (reload): recompute every host's place in the heaps."""
        self._clear_heaps()
        for key, queue in self._pending.items():
            if queue:
                self._schedule(key)
        self._changed.set()

    def has_pending(self, key: str) -> bool:
        """Whether a claimed job waits for host `key`."""
        return bool(self._pending.get(key))

    def wake(self) -> None:
        self._changed.set()

    def close(self) -> None:
        """Hand out no more jobs (shutdown); whoever waits in `next_ready` gets None."""
        self._closed = True
        self._changed.set()

    def clear(self) -> None:
        """Forget every job not yet started (shutdown puts them back in the queue)."""
        self._pending.clear()
        self._clear_heaps()
        self.pending = 0

    def _clear_heaps(self) -> None:
        self._waiting.clear()
        self._ready.clear()
        self._rank.clear()
        self._in_heap.clear()

    async def next_ready(self, max_wait_s: float) -> tuple[Job, Permit] | None:
        """A global slot, then the job of the host ready first, with its host's place taken
        (both held by the Permit); None after `max_wait_s` without one, when woken with nothing
        ready (the caller re-checks), or once closed. Waiting for a host holds the one global
        slot this call took: it goes to whichever host gets ready first."""
        await self._limits.slots.acquire()
        job = await self._next_job(max_wait_s)
        if job is None:
            self._limits.slots.release()
            return None
        self.in_flight += 1
        return job, Permit(self, job.target.host_key)

    async def _next_job(self, max_wait_s: float) -> Job | None:
        job = self._pop_ready()
        if job is not None:
            return job
        self._changed.clear()
        delay = max_wait_s
        if self._waiting:
            delay = min(delay, max(self._waiting[0][0] - self._clock(), 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # wait_for would make a task per wait
                await self._changed.wait()
        return self._pop_ready()

    def _pop_ready(self) -> Job | None:
        """The best-ranked ready host's job, if a host is ready (each host is checked once
        more as it comes up: its limiter, its lease, its robots.txt)."""
        if self._closed:
            return None
        now = self._clock()
        while True:
            while self._waiting and self._waiting[0][0] <= now:
                _, _, key = heapq.heappop(self._waiting)
                self._in_heap.discard(key)
                if self._pending.get(key):
                    self._make_ready(key)
                else:
                    self._pending.pop(key, None)
            if not self._ready:
                return None
            rank, _, key = heapq.heappop(self._ready)
            if self._rank.get(key) != -rank:
                continue  # a stale entry: the host came up again with a better job
            del self._rank[key]
            self._in_heap.discard(key)
            job = self._take(key, now)
            if job is not None:
                return job

    def _take(self, key: str, now: float) -> Job | None:
        """The job `key` may start now, or None (the host put back where it belongs)."""
        queue = self._pending.get(key)
        if not queue:
            self._pending.pop(key, None)
            return None
        limiter = self._limits.host(key)
        ready_at = limiter.ready_at(now)
        if ready_at > now:
            self._push(key, ready_at)
            return None
        lease_end = self._lease_end(key)
        if lease_end - now <= self._reach_s:
            if lease_end == -math.inf:  # not this daemon's host (any more)
                self._give_up(key, queue)
            else:  # held, but a request might outlast the lease: the renewal may come
                self._push(key, now + FENCE_RECHECK_S)
            return None
        if self._robots is not None:
            front = queue[0][2]
            gate, until = self._robots.check(front.target)
            if gate is Gate.WAIT:  # its robots.txt is on its way, or asked again later
                self._push(key, until)  # `inf`: the robots job's release brings it back
                return None
            if gate is Gate.FETCH:
                limiter.start(now)  # the host's limits and counters hold for it too
                origin = origin_of(front.target)
                target = robots_target(origin)
                return Job(0, target.url, key, 0, target, robots_for=origin)
            if gate is Gate.REFUSE:
                self._refuse(self._pop_job(key, queue))
                if queue:
                    self._push(key, now)
                return None
        job = self._pop_job(key, queue)
        limiter.start(now)
        if queue:
            self._push(key, limiter.ready_at(now), now)
        return job

    def _pop_job(self, key: str, queue: list[tuple[int, int, Job]]) -> Job:
        job = heapq.heappop(queue)[2]
        self.pending -= 1
        if not queue:
            del self._pending[key]
        return job

    def _give_up(self, key: str, queue: list[tuple[int, int, Job]]) -> None:
        """Every job waiting for `key` goes to `lost`: another daemon holds the host now."""
        del self._pending[key]
        self.pending -= len(queue)
        for _, _, job in queue:
            self._lost(job)

    def _schedule(self, key: str) -> None:
        if key not in self._in_heap:
            now = self._clock()
            self._push(key, self._limits.host(key).ready_at(now), now)

    def _push(self, key: str, ready_at: float, now: float = -math.inf) -> None:
        """`key` waits until `ready_at`; straight to the ready heap when that is `now`."""
        if ready_at == math.inf:
            return  # at its in-flight cap: `finished` puts it back
        if ready_at <= now and self._pending.get(key):
            self._make_ready(key)
            return
        self._seq += 1
        heapq.heappush(self._waiting, (ready_at, self._seq, key))
        self._in_heap.add(key)

    def _make_ready(self, key: str) -> None:
        """`key` is ready: in the ready heap at the rank of its best job."""
        best = -self._pending[key][0][0]
        self._seq += 1
        heapq.heappush(self._ready, (-best, self._seq, key))
        self._rank[key] = best
        self._in_heap.add(key)
