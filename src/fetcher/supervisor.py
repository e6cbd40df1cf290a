"""The daemon's background tasks under one supervisor, and the store's ups and downs.

Two kinds of trouble, told apart here and nowhere else:
- the store is away for a while (`StoreUnavailable`: locked past the busy timeout, disk full,
  read-only, the server restarting). `StoreHealth.call` waits and tries again with capped
  backoff, logs the episode once (`store.unavailable` … `store.recovered`) and says so in
  systemd's STATUS=; what the daemon holds in memory stays there until it commits.
- anything else a background task raises is a bug. The supervisor logs it once
  (`service.crashed`, with the task and the traceback) and stops the daemon, which then exits 1
  so systemd restarts it. Nothing is swallowed: a task never ends silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fetcher.errors import StoreUnavailable
from fetcher.log import get_logger
from fetcher.systemd import Notifier

__all__ = ["StoreHealth", "Supervisor", "wait_set"]

_log = get_logger("fetcher.supervisor")
_T = TypeVar("_T")


class StoreHealth:
    """Whether the store answers, shared by every task that uses it: one episode of
    unavailability is logged once, however many tasks meet it. It ends when every operation
    that failed during it has succeeded since: under SQLite's WAL, reads go on while another
    process holds the write lock, and a read that works says nothing about the writes."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        first_wait_s: float = 0.1,
        max_wait_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._first_wait_s = first_wait_s
        self._max_wait_s = max_wait_s
        self._clock = clock
        self.down: StoreUnavailable | None = None  # the error that began the current episode
        self._down_since = 0.0
        self._failures = 0
        self._failing: set[str] = set()  # operations that failed in this episode, not yet retried

    async def call(
        self,
        operation: str,
        action: Callable[[], Awaitable[_T]],
        *,
        give_up: asyncio.Event | None = None,
    ) -> _T:
        """`action()` until it succeeds, waiting between tries while the store is unavailable.
        Raises the last `StoreUnavailable` once `give_up` is set (a stopping feeder need not
        wait for the store; a final commit has a deadline)."""
        wait_s = self._first_wait_s
        while True:
            try:
                result = await action()
            except StoreUnavailable as exc:
                self._failed(operation, exc)
                if give_up is not None and give_up.is_set():
                    self._failing.discard(operation)  # not retried: no word on it to wait for
                    raise
                await wait_set(give_up, wait_s)
                wait_s = min(wait_s * 2, self._max_wait_s)
                continue
            if self.down is not None:
                self._failing.discard(operation)
                if not self._failing:
                    self._recovered(operation)
            return result

    def _failed(self, operation: str, exc: StoreUnavailable) -> None:
        self._failures += 1
        self._failing.add(operation)
        if self.down is not None:
            _log.debug("store.still_unavailable", operation=operation, reason=exc.reason)
            return
        self.down, self._down_since = exc, self._clock()
        _log.warning("store.unavailable", operation=operation, reason=exc.reason)
        self._notifier.notify(STATUS=self.status_line())

    def _recovered(self, operation: str) -> None:
        _log.info(
            "store.recovered",
            operation=operation,
            after_s=round(self._clock() - self._down_since, 3),
            failures=self._failures,
        )
        self.down, self._failures = None, 0
        self._notifier.notify(STATUS="store available again")

    def status_line(self) -> str:
        assert self.down is not None
        since_s = self._clock() - self._down_since
        return f"store unavailable for {since_s:.0f}s ({self.down}); retrying"


async def wait_set(event: asyncio.Event | None, seconds: float) -> None:
    """Until `event` is set, `seconds` at most (no event: just `seconds`). Without a task per
    wait, as `asyncio.wait_for` would make."""
    if event is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class Supervisor:
    """Starts the background tasks and watches them: one that ends with an exception, or ends
    at all before `stopping` is set, stops the daemon through `on_crash`; at the end, `stop`
    cancels the ones that may be cancelled (nothing they hold is lost) and waits for the others
    to finish by themselves."""

    def __init__(self, on_crash: Callable[[str], None], stopping: asyncio.Event) -> None:
        self._on_crash = on_crash
        self._stopping = stopping
        self._tasks: dict[asyncio.Task[None], bool] = {}  # task → may be cancelled
        self.crashed: str | None = None  # "task: error" of the first crash

    def start(
        self, name: str, coro: Coroutine[Any, Any, None], *, cancellable: bool = False
    ) -> None:
        """Run `coro` as task `name`. Tasks that talk to the store are never cancelled: a
        cancelled await on aiosqlite does not stop its thread, so a COMMIT could land after
        the daemon gave up on it. They end when the daemon's stopping event is set."""
        task = asyncio.create_task(coro, name=name)
        self._tasks[task] = cancellable
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is None and self._stopping.is_set():
            return  # a task's normal end
        why = repr(exc) if exc is not None else "ended before the daemon stopped"
        _log.error("service.crashed", task=task.get_name(), error=why, exc_info=exc)
        if self.crashed is None:
            self.crashed = f"{task.get_name()}: {why}"
            self._on_crash(self.crashed)

    async def stop(self) -> None:
        for task, cancellable in self._tasks.items():
            if cancellable:
                task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)  # each task's end was reported by `_ended`
