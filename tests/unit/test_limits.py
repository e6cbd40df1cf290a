"""Host limits, the scheduler and the feeder's share, on an injected clock: rate, burst,
in-flight cap, no head-of-line blocking."""

from __future__ import annotations

import pytest

from fetcher.config import HostLimits
from fetcher.feeder import allot
from fetcher.limits import HostLimiter, Limits
from fetcher.model import Job
from fetcher.scheduler import Scheduler
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
