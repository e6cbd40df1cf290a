"""The limits on requests: the global semaphore, and each host's in-flight cap, rate and pause.

A host's rate is a token bucket kept as GCRA (the generic cell rate algorithm: one
"theoretical arrival time" per host instead of a token count and a refill timer). With rate r
and burst b a host gets at most b requests at once after being idle, then one every 1/r
seconds, so no window of one second holds more than r + b of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Mapping

from fetcher.config import HostLimits
from fetcher.model import HostRate

__all__ = ["HostLimiter", "Limits"]


class HostLimiter:
    """One host's meter: may a request start now, and if not, when."""

    __slots__ = ("_tat", "in_flight", "limits", "paused_until", "strikes")

    def __init__(self, limits: HostLimits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.paused_until = 0.0
        self.strikes = 0
        self._tat = -math.inf

    def ready_at(self, now: float) -> float:
        """The earliest time a request may start; `inf` while the host is at its in-flight cap."""
        if self.in_flight >= self.limits.concurrency:
            return math.inf
        ready = self.paused_until
        if self.limits.rate > 0:
            ready = max(ready, self._tat - (self.limits.burst - 1) / self.limits.rate)
        return max(ready, now)

    def start(self, now: float) -> None:
        """A request starts now: take a token and an in-flight place."""
        self.in_flight += 1
        if self.limits.rate > 0:
            interval = 1.0 / self.limits.rate
            # Started a little after its slot (the loop woke late): the next slot still follows
            # this one, or the host would lose that lateness on every request (BENCHMARKS.md,
            # "late starts").
            # After a longer gap the host was idle: the schedule starts again from now.
            late = now - self._tat
            self._tat = self._tat + interval if late < interval else now + interval

    def finish(self) -> None:
        """A request ended (response, error or cancellation)."""
        self.in_flight -= 1

    def pause(self, until: float) -> None:
        """The host asked for a break (Retry-After): no request starts before `until`."""
        self.paused_until = max(self.paused_until, until)

    def throttle(self, now: float, base_s: float, max_s: float) -> float:
        """The host said 429 without Retry-After: pause it, twice as long as the last time
        while it keeps saying so; returns the pause in seconds."""
        self.strikes += 1
        pause_s = min(max_s, max(base_s, 0.1) * 2.0 ** min(self.strikes - 1, 30))
        self.pause(now + pause_s)
        return pause_s

    def recover(self) -> None:
        """A response that was not 429: the host gets back toward its configured pace."""
        if self.strikes:
            self.strikes -= 1

    def schedule(self) -> tuple[float, float]:
        """(theoretical arrival time, end of pause) on the clock of `start`'s `now`."""
        return self._tat, self.paused_until

    def resume(self, tat: float, paused_until: float) -> None:
        """Go on with the schedule another daemon left (a host handed over): the next request
        comes no sooner than it would have come there."""
        self._tat = max(self._tat, tat)
        self.paused_until = max(self.paused_until, paused_until)

    def idle(self, now: float) -> bool:
        """Nothing in flight, no pause, and a full bucket: forgetting it changes nothing."""
        return self.in_flight == 0 and self.paused_until <= now and self._tat <= now


class Limits:
    """The global cap and every host's limiter, with the per-host overrides in force."""

    def __init__(
        self,
        max_concurrency: int,
        defaults: HostLimits,
        overrides: Mapping[str, HostLimits],
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        # The global cap on requests in flight. A slot is taken before a host is chosen and
        # held until that request's outcome is known; waiting for a host never holds one
        # for a host that is not ready (the scheduler hands out the host ready first).
        self.slots = asyncio.Semaphore(max_concurrency)
        self._defaults = defaults
        self._overrides = dict(overrides)
        self._clock = clock
        self._wall = wall
        self._hosts: dict[str, HostLimiter] = {}
        self._site_delays: dict[str, float] = {}  # host → seconds its robots.txt asks for

    def host(self, key: str) -> HostLimiter:
        limiter = self._hosts.get(key)
        if limiter is None:
            limiter = HostLimiter(self.limits_for(key))
            self._hosts[key] = limiter
        return limiter

    def limits_for(self, key: str) -> HostLimits:
        """The operator's limits for `key`, slowed to the interval its site asks for: the larger
        of the two intervals, one request at a time after idle."""
        limits = self._overrides.get(key, self._defaults)
        delay = self._site_delays.get(key)
        if delay is None or (limits.rate > 0 and 1.0 / limits.rate >= delay):
            return limits
        return dataclasses.replace(limits, rate=1.0 / delay, burst=1)

    def site_delay(self, key: str, seconds: float | None) -> None:
        """The interval `key`'s robots.txt asks for (None: none); applies to the next request."""
        if seconds:
            self._site_delays[key] = seconds
        else:
            self._site_delays.pop(key, None)
        if key in self._hosts:
            self._hosts[key].limits = self.limits_for(key)

    def reload(self, overrides: Mapping[str, HostLimits]) -> None:
        """New per-host overrides; requests in flight keep going, new ones follow the new limits."""
        self._overrides = dict(overrides)
        for key, limiter in self._hosts.items():
            limiter.limits = self.limits_for(key)

    def in_flight(self, key: str) -> int:
        """Requests to `key` in flight now."""
        limiter = self._hosts.get(key)
        return 0 if limiter is None else limiter.in_flight

    def rate_of(self, key: str) -> HostRate:
        """`key`'s schedule in unix time, to hand the host to another daemon."""
        limiter = self._hosts.get(key)
        if limiter is None:
            return HostRate()  # forgotten while idle: a full bucket, no pause
        offset = self._wall() - self._clock()
        tat, paused_until = limiter.schedule()  # -inf, 0.0: never started, never paused
        return HostRate(max(tat + offset, 0.0), paused_until + offset if paused_until > 0 else 0.0)

    def schedules(self) -> dict[str, HostRate]:
        """Every host's schedule this daemon keeps (the rest are idle: a full bucket, no pause),
        to hand back at shutdown."""
        return {key: self.rate_of(key) for key in self._hosts}

    def resume(self, key: str, rate: HostRate) -> None:
        """`key` was handed over with schedule `rate` (unix time): go on with it."""
        offset = self._clock() - self._wall()
        tat = rate.tat + offset if rate.tat else -math.inf
        self.host(key).resume(tat, rate.paused_until + offset if rate.paused_until else 0.0)

    def forget_idle(self) -> None:
        """Drop the meters of hosts that are idle and unpaused (bounded memory over many hosts)."""
        now = self._clock()
        for key in [key for key, host in self._hosts.items() if host.idle(now)]:
            del self._hosts[key]
