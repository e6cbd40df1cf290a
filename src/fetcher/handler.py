"""One job's turn, top to bottom, once the scheduler has given it a slot and its host's place:

handle          a bug met on the way fails this job (`internal error: …`), never the daemon
  → step        one hop: fetch it, count its requests, decide (`policy.decide`)
    → host signals   a Retry-After or a 429 pauses the host; a good answer eases it
    → follow    a redirect: the job goes back to the scheduler, bound for the hop's host
    → settle    this attempt is over: the outcome to the recorder, the job out of memory
  → robots step    the job is the fetch of an origin's robots.txt: its verdict lets the
                   origin's jobs go, wait, or be refused; its Crawl-delay slows the host

The scheduler hands over two more ends of a turn: a job its robots.txt disallows (`disallowed`,
no request made) and a job whose host this daemon no longer holds (`not_held`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fetcher.clocks import Clocks
from fetcher.config import Settings
from fetcher.feeder import Feeder
from fetcher.fetch import Fetcher
from fetcher.limits import Limits
from fetcher.log import get_logger
from fetcher.model import DISALLOWED, Exchange, Hop, Job, JobState, Outcome, Verdict
from fetcher.policy import decide, exchanges_of, redirected
from fetcher.recorder import Recorder
from fetcher.recurrence import changed, next_run
from fetcher.robots import RobotsGate, fetch_robots, host_of
from fetcher.scheduler import Scheduler

__all__ = ["JobHandler", "Summary"]

_log = get_logger("fetcher.handler")


@dataclass(slots=True)
class Summary:
    """What a run did, in counts (the `service.stopped` line)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    requests: int = 0
    requeued: int = 0
    moved: int = 0  # redirected to a host another daemon holds: queued there


class JobHandler:
    """Takes each job given a slot through its turn, and counts what the turns did."""

    def __init__(
        self,
        settings: Settings,
        fetcher: Fetcher,
        *,
        limits: Limits,
        robots: RobotsGate,
        scheduler: Scheduler,
        feeder: Feeder,
        recorder: Recorder,
        clocks: Clocks,
    ) -> None:
        self._settings = settings
        self._fetcher = fetcher
        self._limits = limits
        self._robots = robots
        self._scheduler = scheduler
        self._feeder = feeder
        self._recorder = recorder
        self._clock = clocks.monotonic
        self._wall = clocks.wall
        self._delay_capped: set[str] = set()  # origins whose Crawl-delay was logged as capped
        # a filtered debug line still costs its arguments: skip the call unless it is shown
        self._log_hops = _log.is_enabled_for(logging.DEBUG)
        self.summary = Summary()

    async def handle(self, job: Job) -> None:
        """Fetch one hop of `job`, then follow, retry or finish it. Cancelled (the grace ran
        out), the job stays held and goes back to the queue at shutdown."""
        if job.robots_for is not None:
            await self._robots_step(job.robots_for)
            return
        try:
            await self._step(job)
        except Exception as exc:
            _log.exception("job.crashed", job=job.id, url=job.url)
            outcome = Outcome(
                job.id, JobState.FAILED, job.attempts + 1, error=f"internal error: {exc!r}",
                method=job.first_method,
            )  # fmt: skip
            self._settle(job, outcome)

    async def _step(self, job: Job) -> None:
        conditional = self._settings.conditional and job.hops == 0 and job.method == "GET"
        hop = await self._fetcher.fetch(
            job.target,
            method=job.method,
            headers=job.headers,
            body=job.body,
            timeout_s=job.timeout_s,
            reuse=self._connection_wanted(job),
            validators=job.validators if conditional else None,
        )
        now = self._wall()
        self._count(hop, now)
        if self._log_hops:
            self._log_hop(job, hop)
        decision = decide(job, hop, self._settings, now=now)
        self._apply_host_signals(hop, decision.pause_s, decision.throttled)
        if decision.follow is not None:
            assert hop.status is not None
            redirected(job, hop.status, decision.follow)
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
            self._count(hop, self._wall())
        self._robots.settle(verdict)
        self._recorder.robots(verdict)
        delay = self._apply_site_delay(verdict)
        _log.info(
            "robots.fetched", origin=origin, status=verdict.status, size=verdict.size,
            delay_s=delay, usable=verdict.usable,
        )  # fmt: skip

    def _apply_site_delay(self, verdict: Verdict) -> float | None:
        """The host's interval from its site's Crawl-delay, capped (the cap logged once per
        origin); the interval applied."""
        asked, most = verdict.crawl_delay, self._settings.crawl_delay_max
        delay = None if asked is None else min(asked, most)
        self._limits.site_delay(host_of(verdict.origin), delay)
        if asked is not None and asked > most and verdict.origin not in self._delay_capped:
            self._delay_capped.add(verdict.origin)
            _log.warning(
                "robots.crawl_delay_capped", origin=verdict.origin, asked_s=asked, applied_s=delay
            )
        return delay

    def disallowed(self, job: Job) -> None:
        """The scheduler found `job`'s URL disallowed by its site's robots.txt: it ends
        failed without a request, counted as refused at the host it was bound for."""
        key = job.target.host_key
        self._recorder.requests([Exchange(key, None, 0, 0.0, self._wall(), disallowed=True)])
        outcome = Outcome(
            job.id, JobState.FAILED, job.attempts, error=DISALLOWED, final_url=job.target.url,
            method=job.first_method,
        )  # fmt: skip
        self._settle(job, outcome)

    def not_held(self, job: Job) -> None:
        """`job`'s next request is to a host this daemon does not hold. At its own host (a lease
        lost): it is forgotten here, and the host's new holder takes it back. Past a redirect:
        it moves to the queue of the host it was sent to, whose holder goes on with it."""
        if job.hops == 0:
            self._feeder.settled(job)
            _log.debug("job.left", job=job.id, host=job.host, why="host lease lost")
            return
        outcome = Outcome(
            job.id, JobState.QUEUED, job.attempts, moved_to=job.target, hops=job.hops,
            moved_method=job.method, method=job.first_method,
        )  # fmt: skip
        self._settle(job, outcome)

    def forget_idle(self) -> None:
        """Limiters and robots verdicts of hosts that hold nothing now (memory over many
        hosts); both come back as needed."""
        self._limits.forget_idle()
        self._robots.forget_idle(
            lambda key: key in self._feeder.held or self._scheduler.has_pending(key)
        )

    def _count(self, hop: Hop, now: float) -> None:
        """The requests `hop` put on the wire go to the next batch's counters."""
        exchanges = exchanges_of(hop, now)
        self._recorder.requests(exchanges)
        self.summary.requests += len(exchanges)

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
        if outcome.final:  # a run ends: did it change anything, and when is the next one?
            outcome.changed = changed(outcome, job.last_sha256)
            if job.recurrence is not None:
                outcome.next_run_at, outcome.interval_s = next_run(
                    job.recurrence, outcome.changed, self._wall()
                )
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
