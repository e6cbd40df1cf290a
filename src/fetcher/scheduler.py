"""Which job goes next: the claimed jobs of every host, handed out as their hosts get ready.

Hosts wait in a heap ordered by the time their limiter lets the next request start, so the
scheduler always hands out the job of the host that is ready first; a slow, paused or
rate-limited host never stands in front of a ready one. Backoff and Retry-After are pure
functions of their inputs, tested with numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from fetcher.limits import Limits
from fetcher.model import Job

__all__ = ["Scheduler", "backoff_delay", "retry_after_delay"]


def backoff_delay(
    attempt: int, *, base_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 = the first): exponential
    backoff, capped at `max_s`, with full jitter (uniform between 0 and the cap)."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    return ceiling * rand()


def retry_after_delay(value: str | None, *, now: float, max_s: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP date), at most `max_s`;
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), max_s)


class Scheduler:
    """The claimed jobs, one queue per host, and the heap of hosts by ready time."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._pending: dict[str, deque[Job]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._in_heap: set[str] = set()
        self._seq = 0
        self._changed = asyncio.Event()
        self.pending = 0

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

    def finished(self, key: str) -> None:
        """A request to `key` ended: its in-flight place is free again."""
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

    def connection_wanted(self, key: str) -> bool:
        """Whether a request to host `key` that starts now should leave its connection open:
        yes while a job waits for the host (it may reuse it). Otherwise the connection would
        most likely wait idle until the keep-alive timeout: over thousands of hosts those
        idle connections were most of the daemon's memory (`make bench --only scale`).
        Asking for as many waiting jobs as requests in flight kept fewer still, but a host
        with a backlog then lost connections whenever the feeder was a little late."""
        return bool(self._pending.get(key))

    def wake(self) -> None:
        self._changed.set()

    def take_all(self) -> list[Job]:
        """Every job not yet started (shutdown puts them back in the queue)."""
        jobs = [job for queue in self._pending.values() for job in queue]
        self._pending.clear()
        self._heap.clear()
        self._in_heap.clear()
        self.pending = 0
        return jobs

    async def next_job(self, max_wait_s: float) -> Job | None:
        """The next job whose host is ready, its request counted as started; None after
        `max_wait_s` without one, or when woken with nothing ready (the caller re-checks)."""
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
            job = queue.popleft()
            self.pending -= 1
            limiter.start(now)
            if queue:
                self._push(key, limiter.ready_at(now))
            else:
                del self._pending[key]
            return job
        return None

    def _schedule(self, key: str) -> None:
        if key not in self._in_heap:
            self._push(key, self._limits.host(key).ready_at(self._clock()))

    def _push(self, key: str, ready_at: float) -> None:
        if ready_at == math.inf:
            return  # at its in-flight cap: `finished` puts it back
        self._seq += 1
        heapq.heappush(self._heap, (ready_at, self._seq, key))
        self._in_heap.add(key)
