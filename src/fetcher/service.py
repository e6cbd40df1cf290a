"""The daemon: claim jobs, fetch them within the limits, record what happened, stop cleanly.

run:   lifecycle (signals, register, background tasks, READY … STOPPING, final commit) around
       loop: a slot and the job of the host ready first (one Permit) → spawn its fetch → repeat
       (a host's first job is its origin's robots.txt, fetched the same way; a job it
       disallows ends at once, without a request)
beside it, under the supervisor: the feeder (claims), the recorder (group commit) and the
       housekeeping chores (retries due, leases, STATUS=, metrics, retention)
stop:  no more claims; in-flight requests get FETCHER_SHUTDOWN_GRACE, then are cancelled;
       outcomes are committed; whatever is left goes back to `queued`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fetcher.bodies import BodyStore
from fetcher.config import LEASE_MARGIN_S, HostLimits, Settings, load_hosts_file
from fetcher.errors import ConfigError, StoreUnavailable
from fetcher.feeder import Feeder
from fetcher.fetch import Fetcher
from fetcher.housekeeping import Housekeeping
from fetcher.jobqueue import JobQueue
from fetcher.limits import Limits
from fetcher.log import get_logger
from fetcher.model import DISALLOWED, Exchange, Hop, Job, JobState, Outcome
from fetcher.policy import decide, exchanges_of
from fetcher.recorder import Recorder
from fetcher.robots import RobotsGate, Verdict, fetch_robots, host_of, product_token
from fetcher.scheduler import Permit, Scheduler
from fetcher.supervisor import StoreHealth, Supervisor
from fetcher.systemd import Notifier

if TYPE_CHECKING:
    from fetcher.metrics import Metrics

__all__ = ["Service", "Summary"]

_log = get_logger("fetcher.service")
_IDLE_POLL_S = 0.5
_STORE_GRACE_S = 30.0  # how long the last commit waits for a store that is away, at shutdown


@dataclass(slots=True)
class Summary:
    """What a run did, in counts (the `service.stopped` line)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    requests: int = 0
    requeued: int = 0
    moved: int = 0  # redirected to a host another daemon holds: queued there


class Service:
    """One daemon on one queue."""

    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        fetcher: Fetcher,
        *,
        drain: bool = False,
        overrides: Mapping[str, HostLimits] | None = None,
        notifier: Notifier | None = None,
        bodies: BodyStore | None = None,
        metrics: Metrics | None = None,
        install_signal_handlers: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._fetcher = fetcher
        self._drain = drain
        self._notifier = notifier or Notifier({})
        self._metrics = metrics
        self._install_signals = install_signal_handlers
        self._clock = clock
        self._wall = wall
        self._limits = Limits(
            settings.max_concurrency, settings.default_limits, overrides or {}, clock, wall
        )
        self._robots = RobotsGate(
            token=product_token(settings.user_agent),
            ttl_s=settings.robots_ttl,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            obeyed=lambda key: self._limits.limits_for(key).robots,
            clock=clock,
            wall=wall,
        )
        self._delay_capped: set[str] = set()  # origins whose Crawl-delay was logged as capped
        self._scheduler = Scheduler(
            self._limits,
            clock,
            robots=self._robots,
            refuse=self._disallowed,
            lease_end=queue.lease_end,
            reach_s=settings.timeout + LEASE_MARGIN_S,
            lost=self._not_held,
        )
        self._stopping = asyncio.Event()
        self._store_deadline = asyncio.Event()  # set _STORE_GRACE_S after stopping began
        self._health = StoreHealth(self._notifier)
        self._supervisor = Supervisor(on_crash=self._crashed, stopping=self._stopping)
        self._feeder = Feeder(
            queue,
            self._scheduler,
            self._limits,
            self._health,
            robots=self._robots,
            lease_s=settings.lease_s,
            # what many slow, polite hosts need to keep every slot busy (64 slots over hosts
            # at 2/s: 640 of them at once), and little memory (BENCHMARKS.md, "polite")
            max_held=max(64 * settings.max_concurrency, 4096),
        )
        self._recorder = Recorder(queue, self._health, metrics)
        self._housekeeping = Housekeeping(
            queue,
            self._health,
            self._notifier,
            lease_s=settings.lease_s,
            retention_days=settings.retention_days,
            bodies=bodies,
            metrics=metrics,
            in_flight=lambda: len(self._in_flight),
            on_due=self._feeder.wake,
            forget_idle=self._forget_idle,
            wall=wall,
        )
        self._in_flight: dict[asyncio.Task[None], Permit] = {}
        self._grace_timer: asyncio.TimerHandle | None = None
        # a filtered debug line still costs its arguments: skip the call unless it is shown
        self._log_hops = _log.is_enabled_for(logging.DEBUG)
        self.summary = Summary()

    # -- the main loop ----------------------------------------------------------------------

    async def run(self) -> Summary:
        async with self._lifecycle():
            drained = self._drain and await self._drained()  # an empty queue ends at once
            while not drained and not self._stopping.is_set():
                ready = await self._scheduler.next_ready(max_wait_s=_IDLE_POLL_S)
                if ready is not None:
                    self._spawn(*ready)
                elif self._drain:
                    drained = await self._drained()
        return self.summary

    def _spawn(self, job: Job, permit: Permit) -> None:
        task = asyncio.create_task(self._handle(job), name=f"fetch {job.id}")
        self._in_flight[task] = permit
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        """The one place a request's slot is given back, however its task ended (a task
        cancelled before it ever ran never reaches a `finally` of its own)."""
        self._in_flight.pop(task).release()
        if self._drain and not self._in_flight and not self._feeder.held:
            self._scheduler.wake()  # perhaps the last job: let the loop check now, not at its poll

    async def _handle(self, job: Job) -> None:
        """Fetch one hop of `job`, then follow, retry or finish it. A bug met on the way
        fails this job with the reason, never the daemon. Cancelled (the grace ran out), the
        job stays held and goes back to the queue at shutdown."""
        if job.robots_for is not None:
            await self._robots_step(job.robots_for)
            return
        try:
            await self._step(job)
        except Exception as exc:
            _log.exception("job.crashed", job=job.id, url=job.url)
            outcome = Outcome(
                job.id, JobState.FAILED, job.attempts + 1, error=f"internal error: {exc!r}"
            )
            self._settle(job, outcome)

    async def _step(self, job: Job) -> None:
        conditional = self._settings.conditional and job.hops == 0
        hop = await self._fetcher.fetch(
            job.target,
            reuse=self._connection_wanted(job),
            validators=job.validators if conditional else None,
        )
        now = self._wall()
        exchanges = exchanges_of(hop, now)
        self._recorder.requests(exchanges)
        self.summary.requests += len(exchanges)
        if self._log_hops:
            self._log_hop(job, hop)
        decision = decide(job, hop, self._settings, now=now)
        self._apply_host_signals(hop, decision.pause_s, decision.throttled)
        if decision.follow is not None:
            job.target = decision.follow
            job.hops += 1
            self._scheduler.add(job)
            self._recorder.soon()
            return
        assert decision.outcome is not None
        self._settle(job, decision.outcome)

    async def _robots_step(self, origin: str) -> None:
        """Fetch `origin`'s robots.txt (its host's place and token are this job's), count its
        requests, and let the origin's jobs go (or wait, or be refused) by what it says."""
        try:
            async with asyncio.timeout(self._settings.timeout):  # its redirects too: one deadline
                verdict, hops = await fetch_robots(
                    self._fetcher, origin, self._robots.token, self._wall()
                )
        except TimeoutError:  # FETCHER_TIMEOUT for the whole of it: as if it did not answer
            verdict, hops = Verdict(origin, self._wall(), None), []
        except Exception:  # a bug: as if it did not answer, asked again on the backoff schedule
            _log.exception("robots.crashed", origin=origin)
            verdict, hops = Verdict(origin, self._wall(), None), []
        except BaseException:
            self._robots.forget(origin)  # cancelled (shutdown): the next job asks again
            raise
        for hop in hops:
            exchanges = exchanges_of(hop, self._wall())
            self._recorder.requests(exchanges)
            self.summary.requests += len(exchanges)
        self._robots.settle(verdict)
        self._recorder.robots(verdict)
        key = host_of(origin)
        asked = verdict.crawl_delay
        delay = None if asked is None else min(asked, self._settings.crawl_delay_max)
        self._limits.site_delay(key, delay)
        capped = asked is not None and asked > self._settings.crawl_delay_max
        if capped and origin not in self._delay_capped:  # logged once per origin
            self._delay_capped.add(origin)
            _log.warning("robots.crawl_delay_capped", origin=origin, asked_s=asked, applied_s=delay)
        _log.info(
            "robots.fetched", origin=origin, status=verdict.status, size=verdict.size,
            delay_s=delay, usable=verdict.usable,
        )  # fmt: skip

    def _disallowed(self, job: Job) -> None:
        """The scheduler found `job`'s URL disallowed by its site's robots.txt: it ends
        failed without a request, counted as refused at the host it was bound for."""
        key = job.target.host_key
        self._recorder.requests([Exchange(key, None, 0, 0.0, self._wall(), disallowed=True)])
        outcome = Outcome(
            job.id, JobState.FAILED, job.attempts, error=DISALLOWED, final_url=job.target.url
        )
        self._settle(job, outcome)

    def _not_held(self, job: Job) -> None:
        """`job`'s next request is to a host this daemon does not hold. At its own host (a lease
        lost): it is forgotten here, and the host's new holder takes it back. Past a redirect:
        it moves to the queue of the host it was sent to, whose holder goes on with it."""
        if job.hops == 0:
            self._feeder.settled(job)
            _log.debug("job.left", job=job.id, host=job.host, why="host lease lost")
            return
        outcome = Outcome(job.id, JobState.QUEUED, job.attempts, moved_to=job.target, hops=job.hops)
        self._settle(job, outcome)

    def _forget_idle(self) -> None:
        """Limiters and robots verdicts of hosts that hold nothing now (memory over many
        hosts); both come back as needed."""
        self._limits.forget_idle()
        self._robots.forget_idle(
            lambda key: key in self._feeder.held or self._scheduler.has_pending(key)
        )

    def _connection_wanted(self, job: Job) -> bool:
        """Whether the request `job` starts now should leave its connection open: yes while a
        job waits for its host, or while the feeder is still bringing in the host's backlog
        (its next jobs may just not be claimed yet). Otherwise the connection would most likely
        wait idle until the keep-alive timeout: over thousands of hosts those idle connections
        were most of the daemon's memory (`make bench --only scale`). Keeping it only while a
        claimed job waited closed a backlogged host's connection whenever the feeder was a
        little late (BENCHMARKS.md, "connection rule")."""
        key = job.target.host_key
        return self._scheduler.has_pending(key) or (key == job.host and self._feeder.refilling(key))

    def _settle(self, job: Job, outcome: Outcome) -> None:
        self._recorder.outcome(outcome)
        self._feeder.settled(job)
        state = outcome.state
        if state is JobState.DONE:
            self.summary.done += 1
        elif state is JobState.FAILED:
            self.summary.failed += 1
        elif outcome.moved_to is not None:
            self.summary.moved += 1
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

    async def _drained(self) -> bool:
        if self._in_flight or self._scheduler.pending or self._feeder.held:
            return False
        try:
            # the store's lock is FIFO: the flush also waits for a commit under way
            await self._recorder.flush(give_up=self._stopping)
            return await self._health.call("is_idle", self._queue.is_idle, give_up=self._stopping)
        except StoreUnavailable:  # only once stopping, which ends the loop anyway
            return False

    # -- limits the hosts ask for -------------------------------------------------------------

    def _apply_host_signals(self, hop: Hop, pause_s: float | None, throttled: bool) -> None:
        key = hop.target.host_key
        limiter = self._limits.host(key)
        if pause_s is not None:
            limiter.pause(self._clock() + pause_s)
            self._recorder.pause(key, self._wall() + pause_s)
            _log.info("host.paused", host=key, seconds=round(pause_s, 3), why="Retry-After")
        elif throttled:
            seconds = limiter.throttle(
                self._clock(), self._settings.backoff_base, self._settings.backoff_max
            )
            self._recorder.pause(key, self._wall() + seconds)
            _log.info("host.paused", host=key, seconds=round(seconds, 3), why="429")
        elif hop.status is not None:
            limiter.recover()

    async def _restore_pauses(self) -> None:
        paused = await self._health.call(
            "paused_hosts", self._queue.paused_hosts, give_up=self._stopping
        )
        now_wall, now = self._wall(), self._clock()
        for key, until in paused.items():
            self._limits.host(key).pause(now + (until - now_wall))
            _log.debug("host.paused", host=key, seconds=round(until - now_wall, 3), why="restart")
        if paused:
            longest = max(paused.values()) - now_wall
            _log.info("hosts.pauses_restored", hosts=len(paused), longest_s=round(longest, 3))

    # -- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifecycle(self) -> AsyncIterator[None]:
        """Everything the run holds, each with its release on the exit stack, so one that fails
        never skips the next. On the way out: stop, let in-flight requests finish (the
        grace), stop the background tasks, commit what is left, put back what never started,
        sign off."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._install_signals:
                    stack.enter_context(self._signal_handlers())
                reclaimed = await self._health.call(
                    "register", self._queue.register, give_up=self._stopping
                )
                stack.push_async_callback(self._unregister)
                stack.push_async_callback(self._release_all)
                stack.push_async_callback(self._final_commit)
                await self._restore_pauses()
                self._start_tasks()
                stack.push_async_callback(self._supervisor.stop)
                stack.push_async_callback(self._finish_in_flight)
                stack.callback(self.stop, "end of run")  # the first thing done on the way out
                _log.info(
                    "service.started",
                    reclaimed=reclaimed,
                    max_concurrency=self._settings.max_concurrency,
                    drain=self._drain,
                )
                self._notifier.notify(
                    READY="1", STATUS=await self._housekeeping.status_line(self._stopping)
                )
                yield
        finally:
            _log.info(
                "service.stopped",
                **dataclasses.asdict(self.summary),
                failure=self.failure,
                peak_rss_kb=_peak_rss_kb(),
            )

    def _start_tasks(self) -> None:
        start = self._supervisor.start
        start("feeder", self._feeder.run(self._stopping))
        start("recorder", self._recorder.run(self._stopping))
        self._housekeeping.start(self._supervisor, self._stopping)
        if self._notifier.watchdog_s:
            start("watchdog", self._watchdog(self._notifier.watchdog_s), cancellable=True)
        if self._metrics is not None:
            self._metrics.in_flight.set_function(lambda: len(self._in_flight))

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.reload_hosts)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def stop(self, why: str = "stop") -> None:
        """Stop claiming; in-flight requests get the shutdown grace, then are cancelled."""
        if self._stopping.is_set():
            return
        _log.info("service.stopping", why=why, in_flight=len(self._in_flight))
        self._notifier.notify(STOPPING="1")
        self._stopping.set()
        self._scheduler.close()
        self._feeder.wake()
        self._recorder.soon()  # its loop ends now, not at its next poll
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self._settings.shutdown_grace, self._cancel_in_flight)
        loop.call_later(self._settings.shutdown_grace + _STORE_GRACE_S, self._store_deadline.set)

    @property
    def failure(self) -> str | None:
        """Why the run failed ("task: error" of the first crash), or None."""
        return self._supervisor.crashed

    def _crashed(self, why: str) -> None:
        self.stop("a task crashed")

    def _cancel_in_flight(self) -> None:
        for task in self._in_flight:
            task.cancel()

    async def _finish_in_flight(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._scheduler.clear()  # its jobs go back to the queue with the rest this daemon holds

    async def _final_commit(self) -> None:
        await self._recorder.flush(give_up=self._store_deadline)

    async def _release_all(self) -> None:
        """What this daemon holds goes back: its jobs to the queue, its hosts (with their
        schedules) to whichever daemon acquires them next."""
        rates = {key: self._limits.rate_of(key) for key in self._queue.held_hosts()}
        self.summary.requeued = await self._health.call(
            "release_all", lambda: self._queue.release_all(rates), give_up=self._store_deadline
        )

    async def _unregister(self) -> None:
        await self._health.call("unregister", self._queue.unregister, give_up=self._store_deadline)

    async def _watchdog(self, interval_s: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that stops turning stops the pings."""
        while True:
            self._notifier.notify(WATCHDOG="1")
            await asyncio.sleep(interval_s)

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
