"""The one thread a daemon writes its bodies with: it runs what it is handed in order, so
records never interleave, and hands the answers back to the event loop a batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines", "Writer"]


class Writer:
    """One thread that runs what it is handed in order, and hands the answers back to the
    event loop a batch at a time: one wake-up of the loop for all the records written while it
    was busy (a thread pool wakes it once a call)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.stopped = False
        self.thread = threading.Thread(target=self._work, name="fetcher-warc", daemon=True)
        self.thread.start()

    def submit(self, call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """`call(*args)` handed over; the future of its answer."""
        if self.stopped:  # nobody would ever answer
            raise RuntimeError("the writer thread has stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, call, args))
        return future

    def post(self, call: Callable[..., Any], *args: Any) -> None:
        """Run `call` in turn, answering nobody (it keeps its own failure)."""
        self._jobs.put((None, None, call, args))

    def stop(self, timeout_s: float | None = None) -> None:
        """Once every job handed over has run; past `timeout_s` (a disk that hangs), OSError,
        and the thread is left to its stuck call (it holds no exit: a daemon thread)."""
        self.stopped = True
        self._jobs.put(None)
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise OSError(f"the body directory did not finish writing within {timeout_s:g}s")

    def _work(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._jobs.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._jobs.get_nowait())
            done: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
            for job in batch:
                if job is None:
                    stopping = True
                    continue
                loop, future, call, args = job
                try:
                    answer: _Answer = (future, call(*args), None)
                except BaseException as exc:  # handed to the caller, whatever it is
                    answer = (future, None, exc)
                if loop is not None:
                    done.setdefault(loop, []).append(answer)
            for loop, answers in done.items():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_answer, answers)


_Job = tuple[
    asyncio.AbstractEventLoop | None,
    "asyncio.Future[Any] | None",
    Callable[..., Any],
    tuple[Any, ...],
]
_Answer = tuple["asyncio.Future[Any] | None", Any, BaseException | None]


def _answer(answers: list[_Answer]) -> None:
    for future, result, error in answers:
        if future is None or future.done():  # cancelled, or given up on (`Deadlines`)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Deadlines:
    """Deadlines for the answers the event loop waits for, with one timer for all of them
    instead of an `asyncio.timeout` each, whose timer handle is made and cancelled a record
    (BENCHMARKS.md, "one timer"). The timer is set for the earliest deadline; when it fires,
    it fails what is past due with `OSError` and is set again for the earliest left."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Future[Any], tuple[float, float]] = {}  # → (when, seconds)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    async def wait(self, future: asyncio.Future[Any], seconds: float) -> Any:
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        self._due[future] = (when, seconds)
        if when < self._timer_at:
            self._set(loop, when)
        try:
            return await future
        finally:
            del self._due[future]

    def _set(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(when, self._expire, loop), when

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        now, left = loop.time(), math.inf
        for future, (when, seconds) in self._due.items():
            if future.done():
                continue
            if when <= now:
                stalled = f"the body directory did not answer within {seconds:g}s"
                future.set_exception(OSError(stalled))
            else:
                left = min(left, when)
        if left < math.inf:
            self._set(loop, left)
