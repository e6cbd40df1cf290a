"""The daemon: claim jobs, fetch them within the limits, record what happened, stop cleanly.

run: lifecycle (signals, READY … STOPPING) around
     loop: take a global slot → the job of the host ready first → spawn fetch → repeat
     beside it: the feeder (claims, retries due, leases), the recorder (batched commits)
stop: no more claims; in-flight requests get FETCHER_SHUTDOWN_GRACE, then are cancelled;
      outcomes are committed; whatever is left goes back to `queued`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fetcher.bodies import BodyStore
from fetcher.config import HostLimits, Settings, load_hosts_file
from fetcher.errors import ConfigError
from fetcher.fetch import Fetcher, Hop
from fetcher.limits import Limits
from fetcher.log import get_logger
from fetcher.model import Exchange, Job, JobState, Outcome
from fetcher.policy import decide, exchanges_of
from fetcher.scheduler import Scheduler
from fetcher.store import Store
from fetcher.systemd import Notifier

if TYPE_CHECKING:
    from fetcher.metrics import Metrics

__all__ = ["Service", "Summary", "allot"]

_log = get_logger("fetcher.service")
_WALK_HOSTS = 64
_IDLE_POLL_S = 0.5
_PRUNE_EVERY_S = 600.0
_COMMIT_GAP_S = 0.02  # at most ~50 commits/s: each is 7 hand-offs to aiosqlite's thread


@dataclass(slots=True)
class Summary:
    """What a run did, in counts (the `service.stopped` line)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    requests: int = 0
    requeued: int = 0


class Service:
    """One daemon on one database."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        fetcher: Fetcher,
        *,
        drain: bool = False,
        overrides: Mapping[str, HostLimits] | None = None,
        notifier: Notifier | None = None,
        bodies: BodyStore | None = None,
        metrics: Metrics | None = None,
        install_signal_handlers: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._store = store
        self._fetcher = fetcher
        self._drain = drain
        self._notifier = notifier or Notifier({})
        self._bodies = bodies
        self._metrics = metrics
        self._install_signals = install_signal_handlers
        self._clock = clock
        self._limits = Limits(
            settings.max_concurrency, settings.default_limits, overrides or {}, clock
        )
        self._scheduler = Scheduler(self._limits, clock)
        self._stopping = asyncio.Event()
        self._settled = asyncio.Event()  # a job left memory: the feeder may claim more
        self._in_flight: dict[asyncio.Task[None], str] = {}  # task → host key it is fetching
        self._held: Counter[str] = Counter()
        self._max_held = max(8 * settings.max_concurrency, 512)
        self._outcomes: list[Outcome] = []
        # every request as it ends, hops of unfinished redirect chains included: committed in
        # the next batch, so the counters never miss a request the host saw
        self._exchanges: list[Exchange] = []
        self._pauses: dict[str, float] = {}  # host → unix time its pause ends, to commit
        self._flush_now = asyncio.Event()
        self._grace_timer: asyncio.TimerHandle | None = None
        self._background: list[asyncio.Task[None]] = []
        # a filtered debug line still costs its arguments: skip the call unless it is shown
        self._log_hops = _log.is_enabled_for(logging.DEBUG)
        self.summary = Summary()

    # -- the main loop ----------------------------------------------------------------------

    async def run(self) -> Summary:
        async with self._lifecycle():
            drained = self._drain and await self._drained()  # an empty queue ends at once
            while not drained and not self._stopping.is_set():
                await self._limits.slots.acquire()
                job = await self._next_job()
                if job is None:
                    self._limits.slots.release()
                    if self._drain and await self._drained():
                        break
                    continue
                self._spawn(job)
            await self._shutdown()
        return self.summary

    async def _next_job(self) -> Job | None:
        if self._stopping.is_set():
            return None
        return await self._scheduler.next_job(max_wait_s=_IDLE_POLL_S)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._handle(job), name=f"fetch {job.id}")
        self._in_flight[task] = job.target.host_key
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        host = self._in_flight.pop(task)
        self._limits.slots.release()
        self._scheduler.finished(host)
        if self._drain and not self._in_flight and not self._held:
            self._scheduler.wake()  # perhaps the last job: let the loop check now, not at its poll
        if not task.cancelled() and task.exception() is not None:
            _log.error("job.crashed", task=task.get_name(), exc_info=task.exception())

    async def _handle(self, job: Job) -> None:
        """Fetch one hop of `job`, then follow, retry or finish it. A bug met on the way
        fails this job with the reason, never the daemon."""
        try:
            await self._step(job)
        except Exception as exc:
            _log.exception("job.crashed", job=job.id, url=job.url)
            outcome = Outcome(
                job.id, JobState.FAILED, job.attempts + 1, error=f"internal error: {exc!r}"
            )
            self._settle(job, outcome)

    async def _step(self, job: Job) -> None:
        reuse = self._scheduler.connection_wanted(job.target.host_key)
        hop = await self._fetcher.fetch(job.target, reuse=reuse)
        now = time.time()
        exchanges = exchanges_of(hop, now)
        self._exchanges.extend(exchanges)
        self.summary.requests += len(exchanges)
        if self._log_hops:
            self._log_hop(job, hop)
        decision = decide(job, hop, self._settings, now=now)
        self._apply_host_signals(hop, decision.pause_s, decision.throttled)
        if decision.follow is not None:
            job.target = decision.follow
            job.hops += 1
            self._scheduler.add(job)
            self._flush_now.set()
            return
        assert decision.outcome is not None
        self._settle(job, decision.outcome)

    # -- limits the hosts ask for -------------------------------------------------------------

    def _apply_host_signals(self, hop: Hop, pause_s: float | None, throttled: bool) -> None:
        key = hop.target.host_key
        limiter = self._limits.host(key)
        if pause_s is not None:
            limiter.pause(self._clock() + pause_s)
            self._keep_pause(key, time.time() + pause_s)
            _log.info("host.paused", host=key, seconds=round(pause_s, 3), why="Retry-After")
        elif throttled:
            seconds = limiter.throttle(
                self._clock(), self._settings.backoff_base, self._settings.backoff_max
            )
            self._keep_pause(key, time.time() + seconds)
            _log.info("host.paused", host=key, seconds=round(seconds, 3), why="429")
        elif hop.status is not None:
            limiter.recover()

    def _keep_pause(self, key: str, until: float) -> None:
        """The pause (to unix time `until`) goes to the database with the next batch: a
        restart keeps it. Of two pauses for a host, the longer wins."""
        self._pauses[key] = max(until, self._pauses.get(key, 0.0))

    async def _restore_pauses(self) -> None:
        now_wall, now = time.time(), self._clock()
        paused = await self._store.paused_hosts()
        for key, until in paused.items():
            self._limits.host(key).pause(now + (until - now_wall))
            _log.debug("host.paused", host=key, seconds=round(until - now_wall, 3), why="restart")
        if paused:
            longest = max(paused.values()) - now_wall
            _log.info("hosts.pauses_restored", hosts=len(paused), longest_s=round(longest, 3))

    # -- recording ----------------------------------------------------------------------------

    def _settle(self, job: Job, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._flush_now.set()
        self._held[job.host] -= 1
        if self._held[job.host] <= 0:
            del self._held[job.host]
        self._settled.set()
        state = outcome.state
        if state is JobState.DONE:
            self.summary.done += 1
        elif state is JobState.FAILED:
            self.summary.failed += 1
        else:
            self.summary.retried += 1
        _log.info(
            f"job.{state.value}",
            job=job.id,
            url=job.url,
            host=job.host,
            status=outcome.status,
            attempts=outcome.attempts,
            hops=job.hops,
            latency_ms=None if outcome.latency_ms is None else round(outcome.latency_ms, 1),
            bytes=outcome.bytes,
            error=outcome.error,
        )

    async def _recorder(self) -> None:
        """Group commit: whatever settled since the last commit goes in the next one, so
        batches grow with the load and an outcome waits at most a commit and a 20 ms gap."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_now.wait(), _IDLE_POLL_S)
            self._flush_now.clear()
            await self._flush()
            await asyncio.sleep(_COMMIT_GAP_S)

    async def _flush(self) -> None:
        if not self._outcomes and not self._exchanges:
            return
        batch, self._outcomes = self._outcomes, []
        exchanges, self._exchanges = self._exchanges, []
        pauses, self._pauses = self._pauses, {}
        try:
            await self._store.record(batch, exchanges, pauses)
        except Exception:
            self._outcomes[:0] = batch  # keep them: the next flush tries again
            self._exchanges[:0] = exchanges
            for key, until in pauses.items():
                self._keep_pause(key, until)
            _log.exception("store.record_failed", outcomes=len(batch))
            await asyncio.sleep(1.0)
            return
        if self._metrics is not None:
            self._metrics.count(exchanges)

    # -- feeding the scheduler ----------------------------------------------------------------

    async def _feeder(self) -> None:
        """Claim queued jobs, host by host, while there is room; a host holds only a few
        seconds' worth, so a slow host's backlog never crowds out the others, and the room is
        shared among the hosts of a walk, so the slots go to many hosts at once rather than
        to the first few (which then open a connection for every slot)."""
        cursor = ""
        claimed_this_cycle = 0
        while not self._stopping.is_set():
            room = self._max_held - sum(self._held.values())
            hosts = await self._store.hosts_with_queued(cursor, _WALK_HOSTS) if room > 0 else []
            wants = allot(room, [(host, self._host_room(host)) for host in hosts[:_WALK_HOSTS]])
            room -= sum(n for _, n in wants)
            jobs = await self._store.claim(wants, self._settings.lease_s) if wants else []
            for job in jobs:
                self._held[job.host] += 1
                self._scheduler.add(job)
            claimed_this_cycle += len(jobs)
            wrapped = len(hosts) <= _WALK_HOSTS
            cursor = "" if wrapped else hosts[_WALK_HOSTS - 1]
            if room <= 0 or (wrapped and claimed_this_cycle == 0):
                self._settled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), _IDLE_POLL_S)
            if wrapped:
                claimed_this_cycle = 0

    def _host_room(self, host: str) -> int:
        limits = self._limits.limits_for(host)
        ahead = 2 * limits.concurrency if limits.rate == 0 else math.ceil(2 * limits.rate)
        return min(limits.concurrency + limits.burst + ahead, 1000) - self._held[host]

    async def _housekeeper(self) -> None:
        """Retries that are due go back to the queue; leases are renewed; STATUS= and the
        idle host meters are refreshed."""
        heartbeat_s = self._settings.lease_s / 4
        last_heartbeat = self._clock()
        last_prune = -math.inf
        ticks = 0
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.25)
            ticks += 1
            if self._metrics is not None and ticks % 4 == 0:
                self._metrics.queue(await self._store.counts())
            if self._clock() - last_prune >= _PRUNE_EVERY_S:
                last_prune = self._clock()
                await self._prune()
            if await self._store.promote_due():
                self._settled.set()
            if self._clock() - last_heartbeat >= heartbeat_s:
                last_heartbeat = self._clock()
                reclaimed = await self._store.heartbeat(self._settings.lease_s)
                if reclaimed:
                    _log.warning("jobs.reclaimed", jobs=reclaimed, why="lease expired")
                self._limits.forget_idle()
                self._notifier.notify(STATUS=await self._status_line())

    async def _prune(self) -> None:
        """FETCHER_RETENTION_DAYS: old results, finished jobs, minute rows and the bodies no
        result names any more go, a batch per transaction; cumulative counters stay."""
        days = self._settings.retention_days
        if days <= 0:
            return
        deleted, orphans = await self._store.prune(time.time() - days * 86400)
        if self._bodies is not None:
            for sha in orphans:
                self._bodies.path_for(sha).unlink(missing_ok=True)
        if deleted or orphans:
            _log.info("retention.pruned", rows=deleted, bodies=len(orphans), days=days)

    async def _watchdog(self, interval_s: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that stops turning stops the pings."""
        while True:
            self._notifier.notify(WATCHDOG="1")
            await asyncio.sleep(interval_s)

    async def _status_line(self) -> str:
        counts = await self._store.counts()
        return (
            f"in flight {len(self._in_flight)}, queued {counts['queued']},"
            f" retrying {counts['retrying']}, done {counts['done']}, failed {counts['failed']}"
        )

    async def _drained(self) -> bool:
        if self._in_flight or self._scheduler.pending or self._held:
            return False
        await self._flush()  # the store's lock is FIFO: this also waits for a commit under way
        return await self._store.is_idle()

    # -- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if self._install_signals:
            loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
            loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
            loop.add_signal_handler(signal.SIGHUP, self.reload_hosts)
        reclaimed = await self._store.register()
        await self._restore_pauses()
        if self._metrics is not None:
            self._metrics.in_flight.set_function(lambda: len(self._in_flight))
            self._metrics.queue(await self._store.counts())
        self._start(self._feeder(), "feeder")
        self._start(self._recorder(), "recorder")
        self._start(self._housekeeper(), "housekeeper")
        if self._notifier.watchdog_s:
            self._start(self._watchdog(self._notifier.watchdog_s), "watchdog")
        _log.info(
            "service.started",
            reclaimed=reclaimed,
            max_concurrency=self._settings.max_concurrency,
            drain=self._drain,
        )
        self._notifier.notify(READY="1", STATUS=await self._status_line())
        try:
            yield
        finally:
            # The store's tasks are asked to stop, never cancelled: a cancelled await on
            # aiosqlite does not stop its thread, so a COMMIT could land after we gave up on it.
            self._stopping.set()
            self._settled.set()
            self._flush_now.set()
            self._notifier.notify(STOPPING="1")
            for task in self._background:
                if task.get_name() == "watchdog":
                    task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            if self._install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self._flush()
            self.summary.requeued = await self._store.release_all()
            await self._store.unregister()
            _log.info(
                "service.stopped", **dataclasses.asdict(self.summary), peak_rss_kb=_peak_rss_kb()
            )

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._background.append(asyncio.create_task(coro, name=name))

    def stop(self, why: str = "stop") -> None:
        """Stop claiming; in-flight requests get the shutdown grace, then are cancelled."""
        if self._stopping.is_set():
            return
        _log.info("service.stopping", why=why, in_flight=len(self._in_flight))
        self._notifier.notify(STOPPING="1")
        self._stopping.set()
        self._scheduler.wake()
        self._settled.set()
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self._settings.shutdown_grace, self._cancel_in_flight)

    def _cancel_in_flight(self) -> None:
        for task in self._in_flight:
            task.cancel()

    async def _shutdown(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._scheduler.take_all()

    def reload_hosts(self) -> None:
        """SIGHUP: read FETCHER_HOSTS_FILE again; a bad file keeps the limits in force."""
        path = self._settings.hosts_file
        if path is None:
            _log.info("hosts.reload_skipped", why="FETCHER_HOSTS_FILE is not set")
            return
        try:
            overrides = load_hosts_file(path, self._settings.default_limits)
        except ConfigError as exc:
            _log.error("hosts.reload_failed", why=str(exc), kept="previous limits")
            return
        self._limits.reload(overrides)
        self._scheduler.reschedule()
        _log.info("hosts.reloaded", hosts=len(overrides))

    def _log_hop(self, job: Job, hop: Hop) -> None:
        """Every hop at debug; at info, the job's line (`_settle`) tells how its attempt ended."""
        _log.debug(
            "request.done",
            job=job.id,
            host=hop.target.host_key,
            url=hop.target.url,
            status=hop.status,
            attempt=job.attempts + 1,
            latency_ms=round(hop.latency_ms, 1),
            bytes=hop.bytes,
            error=hop.error or (hop.refused.reason if hop.refused else None),
        )


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


def _peak_rss_kb() -> int | None:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it does not count the
    parent's memory that a fork carried up to exec). None where /proc is not Linux's."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
