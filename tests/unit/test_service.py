"""The service in process: the in-memory queue, a fake transport and fake clocks. The global
cap, no head-of-line blocking, shutdown, a store that goes away, and a task with a bug."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from fetcher.batch import Batch
from fetcher.bodies import BodyStore
from fetcher.clocks import Clocks
from fetcher.config import HostLimits, Settings
from fetcher.daemon import build_service
from fetcher.fetch import Fetcher
from fetcher.model import JobState
from fetcher.service import Service
from fetcher.systemd import Notifier
from fetcher.transport import HttpxTransport
from fetcher.urls import parse_url
from tests.jobs import job_for
from tests.memory_queue import MemoryQueue

WALL = 1_700_000_000.0


class FrozenClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeOrigin(httpx.AsyncBaseTransport):
    """Answers 200 after `delay_s`; requests to a host in `held` wait until `release` is set.
    Counts what it receives and how many requests were in flight at most."""

    def __init__(self, delay_s: float = 0.005, held: frozenset[str] = frozenset()) -> None:
        self.delay_s = delay_s
        self.held = held
        self.release = asyncio.Event()
        self.requests: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests[str(request.url)] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.url.host in self.held:
                await self.release.wait()
            else:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        return httpx.Response(200, stream=httpx.ByteStream(b"x" * 100), request=request)


def make_service(
    tmp_path: Path,
    queue: MemoryQueue,
    origin: FakeOrigin,
    *,
    drain: bool = True,
    clock: Callable[[], float] | None = None,
    hosts: dict[str, HostLimits] | None = None,
    bodies: BodyStore | None = None,
    **overrides: object,
) -> Service:
    values: dict[str, object] = {
        "host_rate": 0, "host_concurrency": 8, "max_concurrency": 4, "robots": "ignore",
    }  # fmt: skip
    values.update(overrides)
    settings = Settings(db=tmp_path / "unused.db", allow_private=True, **values)  # type: ignore[arg-type]
    fetcher = Fetcher(settings, HttpxTransport(origin), bodies)
    return build_service(
        settings,
        queue,
        fetcher,
        drain=drain,
        overrides=hosts,
        bodies=bodies,
        install_signal_handlers=False,
        clocks=Clocks(clock or FrozenClock(100.0), FrozenClock(WALL)),
    )


async def submit(queue: MemoryQueue, hosts: list[str], per_host: int) -> list[str]:
    urls = [f"http://{host}/{i}" for host in hosts for i in range(per_host)]
    await queue.submit([job_for(url) for url in urls])
    return urls


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_the_global_cap_is_reached_and_never_exceeded(tmp_path: Path) -> None:
    """Five hosts that could each take 8 at once, a global cap of 4: exactly 4 in flight at
    the most, and every job done once."""
    queue, origin = MemoryQueue(), FakeOrigin(delay_s=0.02)
    urls = await submit(queue, [f"h{i}.example" for i in range(5)], 10)
    service = make_service(tmp_path, queue, origin, max_concurrency=4)
    summary = await asyncio.wait_for(service.run(), 30)
    assert origin.max_in_flight == 4
    assert summary.done == 50 and queue.states() == Counter(done=50)
    assert origin.requests == Counter({url: 1 for url in urls})
    assert sum(c["requests"] for c in queue.counters.values()) == 50


async def test_a_result_is_committed_only_once_its_body_is_on_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every commit of results with kept bodies comes after an fdatasync that covered their
    records: a power loss cannot leave a committed result pointing past a file's end."""
    queue, origin = MemoryQueue(), FakeOrigin()
    await submit(queue, [f"h{i}.example" for i in range(4)], 25)
    synced: list[int] = []  # the WARC file's size at each fdatasync
    real_sync, real_record = os.fdatasync, queue.record

    def sync(fd: int) -> None:
        real_sync(fd)
        synced.append(os.fstat(fd).st_size)

    async def record(batch: Batch) -> None:
        for outcome in batch.outcomes:
            assert outcome.body_path is not None
            assert synced and synced[-1] > int(outcome.body_path.partition("#")[2])
        await real_record(batch)

    monkeypatch.setattr(os, "fdatasync", sync)
    queue.record = record  # type: ignore[method-assign]
    bodies = BodyStore(tmp_path / "bodies")
    summary = await asyncio.wait_for(make_service(tmp_path, queue, origin, bodies=bodies).run(), 30)
    bodies.close()
    assert summary.done == 100 and queue.states() == Counter(done=100)
    assert 0 < len(synced) < 100  # once a commit, not once a record


async def test_a_paused_host_never_holds_a_slot_another_host_could_use(tmp_path: Path) -> None:
    """One global slot; host a.example is paused for an hour (restored from the queue) with
    jobs waiting; every job of b.example still goes through that one slot, none of a's is sent,
    and a's jobs go back to the queue at shutdown."""
    queue, origin = MemoryQueue(wall=FrozenClock(WALL)), FakeOrigin()
    await submit(queue, ["a.example"], 5)
    await submit(queue, ["b.example"], 20)
    queue.pauses["a.example"] = WALL + 3600
    service = make_service(tmp_path, queue, origin, drain=False, max_concurrency=1)
    run = asyncio.create_task(service.run())
    await wait_for(lambda: len(queue.results) == 20)
    service.stop("test")
    summary = await asyncio.wait_for(run, 10)
    assert {url for url in origin.requests} == {f"http://b.example/{i}" for i in range(20)}
    assert queue.states() == Counter(done=20, queued=5)
    assert summary.requeued == 5


@pytest.mark.parametrize(
    ("rate", "concurrency", "room"),
    [(0, 2, 3 * 2 + 1), (5, 4, 1 + 2 * 5)],  # unlimited: 3 x cap + burst; rated: burst + 2 s
)
async def test_a_backlog_is_held_a_few_seconds_at_a_time_and_never_crowds_out_another_host(
    tmp_path: Path, rate: float, concurrency: int, room: int
) -> None:
    """Host a has 3,000 jobs queued first, its requests hanging; host b's 50 come after, with
    no limit of their own. The daemon holds exactly a's room of a's jobs, never its backlog,
    and b's jobs all complete through the slots a does not use."""
    queue, origin = MemoryQueue(), FakeOrigin(held=frozenset({"a.example"}))
    await submit(queue, ["a.example"], 3000)
    b_urls = await submit(queue, ["b.example"], 50)
    b_key = parse_url(b_urls[0]).host_key
    service = make_service(
        tmp_path, queue, origin, drain=False, max_concurrency=concurrency + 2,
        host_rate=rate, host_burst=1, host_concurrency=concurrency, shutdown_grace=0.1,
        hosts={b_key: HostLimits(0, 1, 8, robots=False)},
    )  # fmt: skip
    run = asyncio.create_task(service.run())
    await wait_for(lambda: sum(origin.requests[url] for url in b_urls) == 50)
    await wait_for(lambda: len(queue.results) == 50)
    held = Counter(row.host for row in queue.rows.values() if row.state is JobState.RUNNING)
    service.stop("test")
    await asyncio.wait_for(run, 10)
    assert held == Counter({parse_url("http://a.example/").host_key: room})
    assert origin.requests == Counter({url: 1 for url in b_urls}) + Counter(
        {url: 1 for url in origin.requests if "a.example" in url}
    )
    assert 1 <= sum(n for url, n in origin.requests.items() if "a.example" in url) <= room
    assert queue.states() == Counter(done=50, queued=3000)


async def test_shutdown_requeues_what_never_started_and_what_the_grace_cut_off(
    tmp_path: Path,
) -> None:
    """Stopped while two requests hang and five more claimed jobs wait (a host with a cap of
    2 holds 7): after the grace the two are cancelled, and all seven go back to `queued`;
    none is left running, none is recorded."""
    queue, origin = MemoryQueue(), FakeOrigin(held=frozenset({"h.example"}))
    await submit(queue, ["h.example"], 10)
    service = make_service(
        tmp_path, queue, origin, drain=False, host_concurrency=2, shutdown_grace=0.1
    )
    run = asyncio.create_task(service.run())
    await wait_for(lambda: origin.in_flight == 2)
    service.stop("test")
    summary = await asyncio.wait_for(run, 10)
    assert queue.states() == Counter(queued=10)
    assert summary.requeued == 7 and not queue.results


async def test_a_store_that_is_away_for_a_while_loses_nothing(tmp_path: Path) -> None:
    """The store refuses every call for a while in the middle of a run: the episode is logged
    once at each end, outcomes wait in memory, the run resumes by itself and completes; every
    job done once, the counters equal what the origin received."""
    queue, origin = MemoryQueue(), FakeOrigin(delay_s=0.01)
    urls = await submit(queue, [f"h{i}.example" for i in range(3)], 100)
    service = make_service(tmp_path, queue, origin, max_concurrency=4)
    with capture_logs() as logs:
        run = asyncio.create_task(service.run())
        await wait_for(lambda: len(queue.results) >= 30)
        queue.down = "database is locked"
        await wait_for(lambda: queue.calls["record"] >= 3 and queue.calls["claim"] >= 2)
        down_for = sum(origin.requests.values())
        await asyncio.sleep(0.3)
        queue.down = None
        summary = await asyncio.wait_for(run, 30)
    events = [e["event"] for e in logs]
    assert events.count("store.unavailable") == 1 and events.count("store.recovered") == 1
    assert "service.crashed" not in events
    assert down_for < 300  # it was down mid-run
    assert summary.done == 300 and queue.states() == Counter(done=300)
    assert origin.requests == Counter({url: 1 for url in urls})
    assert sum(c["requests"] for c in queue.counters.values()) == 300
    assert service.failure is None


@pytest.mark.parametrize("operation", ["promote_due", "claim", "record"])
async def test_a_task_that_raises_a_bug_ends_the_run_with_an_error(
    tmp_path: Path, operation: str
) -> None:
    """A bug (not a store that is away) in a background task: one `service.crashed` line
    naming the task, the run stops by itself, and it reports the failure (exit 1)."""
    queue, origin = MemoryQueue(), FakeOrigin()
    await submit(queue, ["h.example"], 20)
    queue.bug_in = operation
    service = make_service(tmp_path, queue, origin, drain=False)
    with capture_logs() as logs:
        if operation == "record":  # the last commit at the way out meets it again: raised
            with pytest.raises(RuntimeError, match="a bug in record"):
                await asyncio.wait_for(service.run(), 30)
        else:
            await asyncio.wait_for(service.run(), 30)
    crashed = [e for e in logs if e["event"] == "service.crashed"]
    assert len(crashed) == 1 and f"a bug in {operation}" in crashed[0]["error"]
    assert service.failure is not None and f"a bug in {operation}" in service.failure


async def test_stopping_ends_every_background_task_at_once(tmp_path: Path) -> None:
    """A drain of an empty queue ends without waiting out any task's poll (the recorder's is
    0.5 s): stopping wakes the feeder, the recorder and the chores."""
    queue, origin = MemoryQueue(), FakeOrigin()
    service = make_service(tmp_path, queue, origin)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(service.run(), 5)
    assert loop.time() - started < 0.4


class RecordingNotifier(Notifier):
    """sd_notify to a list: (monotonic time, message fields), with a 50 ms watchdog."""

    def __init__(self) -> None:
        super().__init__({})
        self.watchdog_s = 0.05
        self.sent: list[tuple[float, dict[str, str]]] = []

    def notify(self, **fields: str) -> None:
        self.sent.append((time.monotonic(), fields))


async def test_the_watchdog_stops_pinging_while_the_event_loop_is_blocked(
    tmp_path: Path,
) -> None:
    """WATCHDOG=1 comes from the event loop itself: while a task blocks the loop for 0.6 s
    there is no ping (systemd would kill a wedged daemon), before and after there are."""
    queue, origin = MemoryQueue(), FakeOrigin()
    notifier = RecordingNotifier()
    settings = Settings(db=tmp_path / "unused.db", allow_private=True, robots="ignore")
    service = build_service(
        settings, queue, Fetcher(settings, HttpxTransport(origin), None), drain=False,
        notifier=notifier, install_signal_handlers=False,
    )  # fmt: skip
    run = asyncio.create_task(service.run())

    def pings() -> list[float]:
        return [t for t, fields in notifier.sent if "WATCHDOG" in fields]

    await wait_for(lambda: len(pings()) >= 3)
    blocked_from = time.monotonic()
    time.sleep(0.6)  # the loop is wedged: no task runs
    blocked_until = time.monotonic()
    await wait_for(lambda: pings()[-1] > blocked_until + 0.1)
    service.stop("test")
    await asyncio.wait_for(run, 10)
    during = [t for t in pings() if blocked_from < t < blocked_until]
    assert during == []
    assert any(t < blocked_from for t in pings()) and any(t > blocked_until for t in pings())


_CHURN = """
import resource, sys
from fetcher import daemon
if sys.argv[1] == "keep":
    daemon._keep_freed_memory()
def churn():  # what 40 answers in flight leave behind: 8 MB of socket reads, freed
    held = [bytes(200_000) for _ in range(40)]
    del held
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_kept_for_the_next_bodies() -> None:
    """After `_keep_freed_memory` memory freed by one round of bodies serves the next without
    a page fault per 4 kB (glibc otherwise gives it back and faults it in again)."""

    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    kept, given_back = faults("keep"), faults("default")
    assert given_back > 20 * 40 * 200_000 // 4096 // 2  # the default: faulted in every round
    assert kept < given_back // 10
