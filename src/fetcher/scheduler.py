"""Which job goes next: the claimed jobs of every host, handed out as their hosts get ready.

Hosts wait in a heap ordered by the time their limiter lets the next request start, so the
scheduler always hands out the job of the host that is ready first; a slow, paused or
rate-limited host never stands in front of a ready one. A host whose origin's robots.txt is not
known yet hands out the fetch of robots.txt instead, and waits out of the heap until it is
answered; a job its robots.txt disallows is handed to `refuse`, not out.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
from collections import deque
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
        self._pending: dict[str, deque[Job]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._in_heap: set[str] = set()
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
            queue = self._pending[key] = deque()
        queue.append(job)
        self.pending += 1
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
        """Limits changed (reload): recompute every host's place in the heap."""
        self._heap.clear()
        self._in_heap.clear()
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
        self._heap.clear()
        self._in_heap.clear()
        self.pending = 0

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
        if self._heap:
            delay = min(delay, max(self._heap[0][0] - self._clock(), 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # wait_for would make a task per wait
                await self._changed.wait()
        return self._pop_ready()

    def _pop_ready(self) -> Job | None:
        if self._closed:
            return None
        heap = self._heap
        now = self._clock()
        while heap and heap[0][0] <= now:
            _, _, key = heapq.heappop(heap)
            self._in_heap.discard(key)
            queue = self._pending.get(key)
            if not queue:
                self._pending.pop(key, None)
                continue
            limiter = self._limits.host(key)
            ready_at = limiter.ready_at(now)
            if ready_at > now:
                self._push(key, ready_at)
                continue
            lease_end = self._lease_end(key)
            if lease_end - now <= self._reach_s:
                if lease_end == -math.inf:  # not this daemon's host (any more)
                    self._give_up(key, queue)
                else:  # held, but a request might outlast the lease: the renewal may come
                    self._push(key, now + FENCE_RECHECK_S)
                continue
            if self._robots is not None:
                gate, until = self._robots.check(queue[0].target)
                if gate is Gate.WAIT:  # its robots.txt is on its way, or asked again later
                    self._push(key, until)  # `inf`: the robots job's release brings it back
                    continue
                if gate is Gate.FETCH:
                    limiter.start(now)  # the host's limits and counters hold for it too
                    origin = origin_of(queue[0].target)
                    target = robots_target(origin)
                    return Job(0, target.url, key, 0, target, robots_for=origin)
                if gate is Gate.REFUSE:
                    self._refuse(queue.popleft())
                    self.pending -= 1
                    if queue:
                        self._push(key, now)
                    else:
                        del self._pending[key]
                    continue
            job = queue.popleft()
            self.pending -= 1
            limiter.start(now)
            if queue:
                self._push(key, limiter.ready_at(now))
            else:
                del self._pending[key]
            return job
        return None

    def _give_up(self, key: str, queue: deque[Job]) -> None:
        """Every job waiting for `key` goes to `lost`: another daemon holds the host now."""
        del self._pending[key]
        self.pending -= len(queue)
        for job in queue:
            self._lost(job)

    def _schedule(self, key: str) -> None:
        if key not in self._in_heap:
            self._push(key, self._limits.host(key).ready_at(self._clock()))

    def _push(self, key: str, ready_at: float) -> None:
        if ready_at == math.inf:
            return  # at its in-flight cap: `finished` puts it back
        self._seq += 1
        heapq.heappush(self._heap, (ready_at, self._seq, key))
        self._in_heap.add(key)
