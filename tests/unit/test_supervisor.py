"""StoreHealth: one episode of a store that is away, logged once at each end; retries with a
capped backoff; giving up only when told to."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from fetcher.errors import StoreUnavailable
from fetcher.supervisor import StoreHealth, Supervisor
from fetcher.systemd import Notifier


class Flaky:
    """An operation that fails `failures` times, then answers `value`."""

    def __init__(self, failures: int, value: int = 7) -> None:
        self.failures = failures
        self.calls = 0
        self.value = value

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("write", "database is locked")
        return self.value


async def test_one_episode_ends_only_when_every_failed_operation_worked_again() -> None:
    """Two writes fail at once and a read works meanwhile (WAL readers go on under a writer's
    lock): one `store.unavailable`, and `store.recovered` only after both writes worked."""
    health = StoreHealth(Notifier({}), first_wait_s=0.01, max_wait_s=0.02)
    with capture_logs() as logs:
        first = asyncio.create_task(health.call("claim", Flaky(3)))
        second = asyncio.create_task(health.call("record", Flaky(6)))
        await asyncio.sleep(0.005)
        assert await health.call("counts", Flaky(0)) == 7
        assert health.down is not None
        assert await first == 7
        assert health.down is not None  # record still fails
        assert await second == 7
    assert health.down is None
    events = [e["event"] for e in logs if e["log_level"] != "debug"]
    assert events == ["store.unavailable", "store.recovered"]
    assert logs[0]["operation"] in ("claim", "record") and logs[0]["reason"] == "database is locked"


async def test_the_wait_between_tries_doubles_up_to_its_cap() -> None:
    """0.1, 0.2, 0.4 … capped at max_wait_s: with a cap of 0.04 s, ten failures take well
    under a second, and the call then answers."""
    health = StoreHealth(Notifier({}), first_wait_s=0.01, max_wait_s=0.04)
    flaky = Flaky(10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await health.call("claim", flaky) == 7
    elapsed = loop.time() - started
    assert flaky.calls == 11 and 0.01 + 0.02 + 0.04 * 8 <= elapsed < 2.0


async def test_giving_up_raises_only_once_told_to() -> None:
    """A call with `give_up` keeps trying while the event is clear and raises the store's
    error once it is set (a stopping daemon need not wait for the store)."""
    health = StoreHealth(Notifier({}), first_wait_s=0.01, max_wait_s=0.01)
    give_up = asyncio.Event()
    call = asyncio.create_task(health.call("claim", Flaky(10_000), give_up=give_up))
    await asyncio.sleep(0.05)
    assert not call.done()
    give_up.set()
    with pytest.raises(StoreUnavailable, match="database is locked"):
        await asyncio.wait_for(call, 5)


async def test_a_task_that_ends_before_the_daemon_stops_is_a_crash() -> None:
    """A background task that returns, or is cancelled, while the daemon is not stopping
    would leave it alive doing nothing: that is reported as a crash, once; after `stopping`
    is set, a task's end is its normal end."""
    stopping = asyncio.Event()
    crashes: list[str] = []
    supervisor = Supervisor(crashes.append, stopping)

    async def returns_early() -> None:
        return None

    async def waits() -> None:
        await stopping.wait()

    with capture_logs() as logs:
        supervisor.start("feeder", returns_early())
        supervisor.start("recorder", waits())
        await asyncio.sleep(0.01)
        stopping.set()
        await asyncio.wait_for(supervisor.stop(), 5)
    assert crashes == ["feeder: ended before the daemon stopped"]
    assert [e["task"] for e in logs if e["event"] == "service.crashed"] == ["feeder"]
