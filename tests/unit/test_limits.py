"""Host limits, the scheduler and the feeder's share, on an injected clock: rate, burst,
in-flight cap, no head-of-line blocking."""

from __future__ import annotations

import asyncio
import math

import pytest

from fetcher.config import HostLimits
from fetcher.feeder import allot
from fetcher.limits import HostLimiter, Limits
from fetcher.model import HostRate, Job
from fetcher.scheduler import FENCE_RECHECK_S, Scheduler
from fetcher.urls import parse_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_burst_then_rate() -> None:
    """Burst b at once after idle, then one request every 1/rate seconds."""
    host = HostLimiter(HostLimits(rate=2.0, burst=3, concurrency=100))
    starts: list[float] = []
    now = 0.0
    while len(starts) < 9:
        now = host.ready_at(now)
        host.start(now)
        starts.append(now)
    assert starts[:3] == [0.0, 0.0, 0.0]
    assert starts[3:] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])


@pytest.mark.parametrize(("rate", "burst"), [(1.0, 1), (4.0, 1), (2.0, 5), (10.0, 3)])
def test_no_one_second_window_exceeds_rate_plus_burst(rate: float, burst: int) -> None:
    """Over any one-second window a host receives at most rate + burst requests."""
    host = HostLimiter(HostLimits(rate=rate, burst=burst, concurrency=1000))
    starts: list[float] = []
    now = 0.0
    for _ in range(200):
        now = host.ready_at(now)
        host.start(now)
        starts.append(now)
    for i, t in enumerate(starts):
        in_window = sum(1 for u in starts[i:] if u <= t + 1.0)
        assert in_window <= rate + burst


def test_late_starts_do_not_slow_the_rate_nor_break_the_windows() -> None:
    """A loop that wakes 3 ms late every time still gets the configured rate, and no window
    of one second holds more than rate + burst."""
    host = HostLimiter(HostLimits(rate=20.0, burst=1, concurrency=100))
    starts: list[float] = []
    now = 0.0
    for _ in range(400):
        now = host.ready_at(now) + 0.003
        host.start(now)
        host.finish()
        starts.append(now)
    assert (len(starts) - 1) / (starts[-1] - starts[0]) == pytest.approx(20.0, rel=0.001)
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u <= t + 1.0) <= 20 + 1


def test_in_flight_cap_and_pause() -> None:
    """A host at its in-flight cap is not ready; a pause moves its ready time."""
    host = HostLimiter(HostLimits(rate=0, burst=1, concurrency=2))
    host.start(0.0)
    host.start(0.0)
    assert host.ready_at(0.0) == float("inf")
    host.finish()
    assert host.ready_at(0.0) == 0.0
    host.pause(5.0)
    assert host.ready_at(1.0) == 5.0


def test_429_without_retry_after_pauses_longer_each_time_then_recovers() -> None:
    """Repeated 429s without Retry-After pause the host twice as long each time; responses
    that are not 429 bring it back toward its configured pace."""
    host = HostLimiter(HostLimits(rate=0, burst=1, concurrency=4))
    pauses = [host.throttle(100.0, base_s=1, max_s=5) for _ in range(4)]
    assert pauses == [1, 2, 4, 5]
    assert host.ready_at(100.0) == 105.0
    for _ in range(4):
        host.recover()
    assert host.throttle(200.0, base_s=1, max_s=5) == 1


def test_scheduler_hands_out_the_ready_host_first() -> None:
    """A paused host's jobs never stand in front of a ready host's (no head-of-line block)."""
    clock = Clock()
    limits = Limits(4, HostLimits(rate=1.0, burst=1, concurrency=4), {}, clock)
    scheduler = Scheduler(limits, clock)
    for i in range(3):
        url = parse_url(f"http://slow.example/{i}")
        scheduler.add(Job(i, url.url, url.host_key, 0, url))
    fast = parse_url("http://fast.example/")
    limits.host("slow.example").pause(clock.now + 60)
    scheduler.add(Job(9, fast.url, fast.host_key, 0, fast))
    job = scheduler._pop_ready()
    assert job is not None and job.id == 9
    assert scheduler._pop_ready() is None
    clock.now += 60
    job = scheduler._pop_ready()
    assert job is not None and job.target.host_key == "slow.example"


def test_the_feeder_shares_its_room_among_the_hosts_of_a_walk() -> None:
    """Room for 512 jobs and 16 hosts that could each take 193: 32 each, not 193 + 193 +
    126 for the first three (whose slots would then each want a connection of their own)."""
    assert allot(512, [(f"h{i}", 193) for i in range(16)]) == [(f"h{i}", 32) for i in range(16)]
    assert allot(512, [("only", 193)]) == [("only", 193)]
    assert allot(10, [("a", 193), ("b", 1), ("c", 193), ("d", 0)]) == [("a", 3), ("b", 1), ("c", 3)]
    assert allot(0, [("a", 5)]) == [] and allot(5, []) == []


def _job(n: int, url: str, priority: int = 0) -> Job:
    target = parse_url(url)
    return Job(n, target.url, target.host_key, 0, target, priority=priority)


def test_each_finish_gives_back_one_place() -> None:
    host = HostLimiter(HostLimits(rate=0, burst=1, concurrency=3))
    for _ in range(3):
        host.start(0.0)
    assert host.ready_at(0.0) == float("inf")
    host.finish()
    assert (host.in_flight, host.ready_at(0.0)) == (2, 0.0)
    host.finish()
    host.finish()
    assert host.in_flight == 0


def test_a_start_a_whole_interval_late_starts_the_schedule_again() -> None:
    """Late by less than one interval, the next slot follows the last one; late by a whole
    interval or more, the host was idle and its schedule starts again from now."""
    host = HostLimiter(HostLimits(rate=1.0, burst=1, concurrency=9))
    host.start(0.0)  # next slot at 1.0
    host.start(1.5)  # late by 0.5: next at 2.0
    assert host.ready_at(1.5) == 2.0
    host.start(3.0)  # late by exactly 1.0: next at 4.0, not 3.0
    assert host.ready_at(3.0) == 4.0


def test_each_good_response_takes_back_one_strike() -> None:
    host = HostLimiter(HostLimits(rate=0, burst=1, concurrency=4))
    assert [host.throttle(0.0, base_s=1, max_s=100) for _ in range(3)] == [1, 2, 4]
    host.recover()
    assert host.throttle(0.0, base_s=1, max_s=100) == 4  # three strikes again, not two
    host.recover()
    host.recover()
    host.recover()
    host.recover()  # no strikes left: stays at zero
    assert host.strikes == 0
    assert host.throttle(0.0, base_s=0.01, max_s=100) == 0.1  # never under 100 ms


def test_a_host_is_idle_only_with_nothing_in_flight_no_pause_and_a_full_bucket() -> None:
    host = HostLimiter(HostLimits(rate=1.0, burst=1, concurrency=4))
    assert host.idle(0.0)
    host.start(0.0)  # in flight, and its next slot is at 1.0
    assert not host.idle(5.0)
    host.finish()
    assert not host.idle(0.99) and host.idle(1.0)
    host.pause(7.0)
    assert not host.idle(6.99) and host.idle(7.0)


def test_overrides_apply_per_host_and_a_reload_changes_hosts_already_met() -> None:
    defaults = HostLimits(rate=1.0, burst=1, concurrency=2)
    special = HostLimits(rate=9.0, burst=3, concurrency=7)
    given = {"a:80": special}
    limits = Limits(4, defaults, given, Clock())
    given.clear()  # the limits keep their own copy
    a, b = limits.host("a:80"), limits.host("b:80")
    assert (a.limits, b.limits) == (special, defaults)
    assert (limits.limits_for("a:80"), limits.limits_for("c:80")) == (special, defaults)
    assert limits.host("a:80") is a  # one limiter per host
    limits.reload({"b:80": special})
    assert (a.limits, b.limits) == (defaults, special)
    assert limits.limits_for("b:80") == special and limits.limits_for("a:80") == defaults


def test_forget_idle_drops_only_idle_hosts_by_the_clock() -> None:
    clock = Clock()
    limits = Limits(4, HostLimits(rate=0, burst=1, concurrency=2), {}, clock)
    busy, paused, idle = limits.host("busy"), limits.host("paused"), limits.host("idle")
    busy.start(clock.now)
    paused.pause(clock.now + 10)
    limits.forget_idle()
    assert limits.host("busy") is busy and limits.host("paused") is paused
    assert limits.host("idle") is not idle
    clock.now += 10
    limits.forget_idle()
    assert limits.host("paused") is not paused and limits.host("busy") is busy


async def test_hosts_ready_at_the_same_time_go_in_the_order_they_came() -> None:
    clock = Clock()
    scheduler = Scheduler(Limits(9, HostLimits(rate=0, burst=1, concurrency=9), {}, clock), clock)
    for n, host in enumerate(["b", "a", "c", "a"]):
        scheduler.add(_job(n, f"http://{host}.example/{n}"))
    assert scheduler.pending == 4
    assert scheduler.has_pending("a.example") and not scheduler.has_pending("d.example")
    order = []
    while (ready := await scheduler.next_ready(0)) is not None:
        order.append(ready[0].id)
    assert order == [0, 1, 2, 3] and scheduler.pending == 0
    assert not scheduler.has_pending("a.example")


async def test_a_permit_gives_back_both_places_once_and_the_host_s_next_job_goes() -> None:
    """A host at its cap of 1 holds its second job until the first's permit is released;
    releasing twice gives back one global slot, not two."""
    clock = Clock()
    limits = Limits(2, HostLimits(rate=0, burst=1, concurrency=1), {}, clock)
    scheduler = Scheduler(limits, clock)
    scheduler.add(_job(1, "http://h.example/1"))
    scheduler.add(_job(2, "http://h.example/2"))
    first = await scheduler.next_ready(0)
    assert first is not None and first[0].id == 1
    assert await scheduler.next_ready(0) is None  # h is at its cap
    first[1].release()
    first[1].release()
    second = await scheduler.next_ready(0)
    assert second is not None and second[0].id == 2
    assert limits.slots._value == 1  # one slot held (by the second), one free
    second[1].release()
    assert limits.slots._value == 2 and limits.host("h.example").in_flight == 0


async def test_next_ready_waits_for_the_first_ready_host_and_no_longer() -> None:
    """A host whose next slot is 0.2 s away: next_ready returns its job after about 0.2 s, not
    at once and not after the 5 s it may wait; with nothing claimed it returns None after its
    wait."""
    loop = asyncio.get_running_loop()
    limits = Limits(4, HostLimits(rate=5.0, burst=1, concurrency=4), {}, loop.time)
    scheduler = Scheduler(limits, loop.time)
    limits.host("h.example").start(loop.time())
    scheduler.add(_job(1, "http://h.example/1"))
    started = loop.time()
    ready = await scheduler.next_ready(5)
    waited = loop.time() - started
    assert ready is not None and 0.15 <= waited < 0.8, waited
    started = loop.time()
    assert await Scheduler(limits, loop.time).next_ready(0.05) is None
    assert loop.time() - started >= 0.04


async def test_a_closed_scheduler_hands_out_nothing() -> None:
    clock = Clock()
    scheduler = Scheduler(Limits(4, HostLimits(rate=0, burst=1, concurrency=4), {}, clock), clock)
    scheduler.add(_job(1, "http://h.example/1"))
    scheduler.close()
    assert await scheduler.next_ready(0) is None
    scheduler.clear()
    assert scheduler.pending == 0 and not scheduler.has_pending("h.example")


async def test_a_reload_reschedules_hosts_already_waiting() -> None:
    """A host whose next slot was 10 s away gets its new, unlimited rate at once."""
    clock = Clock()
    limits = Limits(4, HostLimits(rate=0.1, burst=1, concurrency=4), {}, clock)
    scheduler = Scheduler(limits, clock)
    limits.host("h.example").start(clock.now)
    scheduler.add(_job(1, "http://h.example/1"))
    assert scheduler._pop_ready() is None
    limits.reload({"h.example": HostLimits(rate=0, burst=1, concurrency=4)})
    scheduler.reschedule()
    job = scheduler._pop_ready()
    assert job is not None and job.id == 1


def test_a_site_s_delay_slows_a_host_only_past_the_operator_s_interval() -> None:
    """Crawl-delay 2 s: a host the operator allows 4/s (or no limit) gets 0.5/s, burst 1;
    one the operator keeps at 0.1/s keeps that; the delay applies to a limiter already made,
    survives a reload, and goes away with None."""
    clock = Clock()
    limits = Limits(
        4, HostLimits(rate=4.0, burst=3, concurrency=2), {"slow": HostLimits(0.1, 2, 2)}, clock
    )
    fast = limits.host("fast")
    limits.site_delay("fast", 2.0)
    limits.site_delay("slow", 2.0)
    limits.site_delay("free", 2.0)
    assert fast.limits == limits.limits_for("fast") == HostLimits(0.5, 1, 2)
    assert limits.limits_for("slow") == HostLimits(0.1, 2, 2)
    limits.reload({"free": HostLimits(0, 5, 9, robots=False)})
    assert limits.limits_for("free") == HostLimits(0.5, 1, 9, robots=False)
    assert fast.limits == HostLimits(0.5, 1, 2)
    limits.site_delay("fast", None)
    assert fast.limits == HostLimits(4.0, 3, 2)
    limits.site_delay("never-met", None)  # nothing to forget: no error
    assert limits.limits_for("never-met") == HostLimits(4.0, 3, 2)
    limits.site_delay("edge", 0.25)  # exactly the operator's interval: the operator's limits
    assert limits.limits_for("edge") == HostLimits(4.0, 3, 2)
    limits.site_delay("edge", 0.4)  # a little slower than the operator's: the site's
    assert limits.limits_for("edge") == HostLimits(2.5, 1, 2)


async def test_the_self_fence_starts_a_request_only_inside_the_lease() -> None:
    """With several daemons a request to a host starts only if it ends (`reach_s` at most)
    before this daemon's lease on the host does: a lease too short holds the host's jobs (the
    renewal may come); a host no longer held gives its jobs up to `lost`; other hosts go on."""
    clock = Clock()
    limits = Limits(8, HostLimits(rate=0, burst=1, concurrency=8), {}, clock)
    ends = {"short.example": clock.now + 10.0, "gone.example": -math.inf, "ok.example": math.inf}
    lost: list[int] = []
    scheduler = Scheduler(
        limits, clock, lease_end=ends.__getitem__, reach_s=12.0, lost=lambda j: lost.append(j.id)
    )
    scheduler.add(_job(1, "http://short.example/1"))
    scheduler.add(_job(2, "http://gone.example/2"))
    scheduler.add(_job(3, "http://gone.example/3"))
    scheduler.add(_job(4, "http://ok.example/4"))
    scheduler.add(_job(5, "http://ok.example/5"))
    ready = await scheduler.next_ready(0)
    assert ready is not None and ready[0].id == 4
    assert sorted(lost) == [2, 3] and not scheduler.has_pending("gone.example")
    assert scheduler.has_pending("short.example") and scheduler.pending == 2
    ready = await scheduler.next_ready(0)
    assert ready is not None and ready[0].id == 5
    assert await scheduler.next_ready(0) is None
    ends["short.example"] = clock.now + 12.0  # renewed, to exactly the reach: not yet
    clock.now += FENCE_RECHECK_S
    ends["short.example"] += FENCE_RECHECK_S
    assert await scheduler.next_ready(0) is None
    ends["short.example"] += 0.5  # renewed past the reach
    clock.now += FENCE_RECHECK_S
    ready = await scheduler.next_ready(0)
    assert ready is not None and ready[0].id == 1 and scheduler.pending == 0


def test_a_host_handed_over_goes_on_with_its_schedule_and_pause() -> None:
    """`rate_of` gives a host's GCRA time and pause in unix time; another daemon's `resume`
    takes them on its own clocks: the host's next request comes no sooner there than it would
    have here. A host never met is a full bucket; its in-flight count is 0 and stays unmade."""
    here, there = Clock(), Clock()
    there.now = 50.0
    limits = HostLimits(rate=2.0, burst=2, concurrency=8)
    a = Limits(8, limits, {}, here, lambda: here.now + 4000.0)
    b = Limits(8, limits, {}, there, lambda: there.now + 4950.0)
    host = a.host("h")
    for _ in range(3):
        host.start(host.ready_at(here.now))  # two at once (the burst), the third 0.5 s on
    assert a.in_flight("h") == 3 and a.in_flight("never.example") == 0
    assert a.rate_of("never.example") == HostRate()
    handed = a.rate_of("h")
    assert handed == HostRate(tat=1001.5 + 4000.0, paused_until=0.0)
    ready_here = host.ready_at(here.now)  # 1001.0: the tat less one interval (burst 2)
    b.resume("h", handed)
    assert b.host("h").ready_at(there.now) == pytest.approx(ready_here - 4950.0 + 4000.0)
    host.pause(1003.0)
    b.resume("h", a.rate_of("h"))  # the later pause wins; an earlier schedule changes nothing
    assert b.host("h").ready_at(there.now) == pytest.approx(1003.0 + 4000.0 - 4950.0)
    b.resume("h", HostRate())
    assert b.host("h").ready_at(there.now) == pytest.approx(53.0)
    b.resume("fresh.example", HostRate())
    assert b.host("fresh.example").ready_at(there.now) == there.now
    assert "never.example" not in a._hosts


async def test_a_host_s_higher_priority_jobs_go_first_whenever_they_come() -> None:
    """Within a host: the highest priority first, the first come among equals; a better job
    added later still goes before those already waiting."""
    clock = Clock()
    scheduler = Scheduler(Limits(9, HostLimits(rate=0, burst=1, concurrency=1), {}, clock), clock)
    for n, priority in enumerate([0, 5, 0, 5]):
        scheduler.add(_job(n, f"http://h.example/{n}", priority))
    order = []
    while (ready := await scheduler.next_ready(0)) is not None:
        order.append(ready[0].id)
        if len(order) == 2:
            scheduler.add(_job(9, "http://h.example/9", 100))
        ready[1].release()
    assert order == [1, 3, 9, 0, 2]


async def test_a_ready_host_whose_best_job_ranks_higher_gets_the_global_slot() -> None:
    """Across hosts, when the global cap is what limits: of the hosts ready, the one whose best
    job ranks highest goes first; among equals, the one ready first. A host already ready
    moves up when a better job arrives for it."""
    clock = Clock()
    scheduler = Scheduler(Limits(1, HostLimits(rate=0, burst=1, concurrency=9), {}, clock), clock)
    scheduler.add(_job(1, "http://low.example/1", 0))
    scheduler.add(_job(2, "http://other.example/2", 0))
    scheduler.add(_job(3, "http://high.example/3", 10))
    order = []
    while (ready := await scheduler.next_ready(0)) is not None:
        order.append(ready[0].id)
        if ready[0].id == 3:
            scheduler.add(_job(4, "http://other.example/4", 20))  # other: ready, now ranks 20
        ready[1].release()
    assert order == [3, 4, 1, 2]  # other's 4 before its own 2; then low, ready before other
