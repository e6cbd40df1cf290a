"""The daemon: claim jobs, fetch them within the limits, record what happened, stop cleanly.

run:   lifecycle (signals, register, background tasks, READY … STOPPING, final commit) around
       loop: a slot and the job of the host ready first (one Permit) → spawn its turn
       (`JobHandler.handle`) → repeat
beside it, under the supervisor: the feeder (claims), the recorder (group commit) and the
       housekeeping chores (retries due, leases, STATUS=, metrics, retention)
stop:  no more claims; in-flight requests get FETCHER_SHUTDOWN_GRACE, then are cancelled;
       outcomes are committed; whatever is left goes back to `queued`, the hosts' schedules
       with it.

`fetcher.daemon.build_service` puts the parts together.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fetcher.config import Settings, load_hosts_file
from fetcher.errors import ConfigError, StoreUnavailable
from fetcher.feeder import Feeder
from fetcher.guarded import GuardedQueue
from fetcher.handler import JobHandler, Summary
from fetcher.housekeeping import Housekeeping
from fetcher.limits import Limits
from fetcher.log import get_logger
from fetcher.model import Job, active_jobs
from fetcher.recorder import Recorder
from fetcher.scheduler import Permit, Scheduler
from fetcher.supervisor import Supervisor
from fetcher.systemd import Notifier

if TYPE_CHECKING:
    from fetcher.api import ApiServer
    from fetcher.webhooks import WebhookSender

__all__ = ["Parts", "Service"]

_log = get_logger("fetcher.service")
_IDLE_POLL_S = 0.5
_STORE_GRACE_S = 30.0  # how long the last commit waits for a store that is away, at shutdown


@dataclass(frozen=True, slots=True)
class Parts:
    """What a daemon is made of (`fetcher.daemon.build_service` makes them). The queue gives
    up waiting for a store that is away once `stopping` is set."""

    queue: GuardedQueue
    limits: Limits
    scheduler: Scheduler
    feeder: Feeder
    recorder: Recorder
    housekeeping: Housekeeping
    handler: JobHandler
    notifier: Notifier
    stopping: asyncio.Event
    api: ApiServer | None = None  # FETCHER_API_ADDR
    webhooks: WebhookSender | None = None  # FETCHER_WEBHOOK_SECRET: jobs may name webhooks


class Service:
    """One daemon on one queue."""

    def __init__(
        self,
        settings: Settings,
        parts: Parts,
        *,
        drain: bool = False,
        install_signal_handlers: bool = True,
    ) -> None:
        self._settings = settings
        self._parts = parts
        self._queue = parts.queue
        self._scheduler = parts.scheduler
        self._feeder = parts.feeder
        self._recorder = parts.recorder
        self._handler = parts.handler
        self._notifier = parts.notifier
        self._stopping = parts.stopping
        self._drain = drain
        self._install_signals = install_signal_handlers
        self._store_deadline = asyncio.Event()  # set _STORE_GRACE_S after stopping began
        # what the way out still writes waits for a store that is away up to that deadline
        self._closing = parts.queue.until(self._store_deadline)
        self._supervisor = Supervisor(on_crash=self._crashed, stopping=self._stopping)
        self._in_flight: dict[asyncio.Task[None], Permit] = {}
        self._grace_timer: asyncio.TimerHandle | None = None

    @property
    def summary(self) -> Summary:
        return self._handler.summary

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
        task = asyncio.create_task(self._handler.handle(job), name=f"fetch {job.id}")
        self._in_flight[task] = permit
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        """The one place a request's slot is given back, however its task ended (a task
        cancelled before it ever ran never reaches a `finally` of its own)."""
        self._in_flight.pop(task).release()
        if self._drain and not self._in_flight and not self._feeder.held:
            self._scheduler.wake()  # perhaps the last job: let the loop check now, not at its poll

    async def _drained(self) -> bool:
        if self._in_flight or self._scheduler.pending or self._feeder.held:
            return False
        try:
            # the store's lock is FIFO: the flush also waits for a commit under way
            await self._recorder.flush()
            active = active_jobs(await self._queue.counts())
            # recurring jobs waiting for their next run never finish: a drain does not wait
            return active == 0 or active == await self._queue.waiting_runs()
        except StoreUnavailable:  # only once stopping, which ends the loop anyway
            return False

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
                reclaimed = await self._queue.register()
                stack.push_async_callback(self._closing.unregister)
                stack.push_async_callback(self._release_all)
                stack.push_async_callback(self._recorder.flush, self._closing)
                if self._parts.api is not None:  # up before READY=1; it answers till the end
                    await self._parts.api.start()
                    stack.push_async_callback(self._parts.api.stop)
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
                status = await self._parts.housekeeping.status_line()
                self._notifier.notify(READY="1", STATUS=status)
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
        self._parts.housekeeping.start(self._supervisor, self._stopping)
        if self._parts.webhooks is not None:
            start("webhooks", self._parts.webhooks.run(self._stopping))
        if self._notifier.watchdog_s:
            start("watchdog", self._watchdog(self._notifier.watchdog_s), cancellable=True)

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
        if self._parts.webhooks is not None:
            self._parts.webhooks.wake()
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

    async def _release_all(self) -> None:
        """What this daemon holds goes back: its jobs to the queue, its hosts' schedules (rate
        and pause) to whichever daemon, or start, takes them up next."""
        self.summary.requeued = await self._closing.release_all(self._parts.limits.schedules())

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
        self._parts.limits.reload(overrides)
        self._scheduler.reschedule()
        _log.info("hosts.reloaded", hosts=len(overrides))


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
