"""The one thread a daemon writes its bodies with: it runs what it is handed in order, so
records never interleave, and hands the answers back to the event loop a batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Writer"]


class Writer:
    """One thread that runs what it is handed in order, and hands the answers back to the
    event loop a batch at a time: one wake-up of the loop for all the records written while it
    was busy (a thread pool wakes it once a call)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.stopped = False
        self.thread = threading.Thread(target=self._work, name="fetcher-warc", daemon=True)
        self.thread.start()

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        if self.stopped:  # nobody would ever answer
            raise RuntimeError("the writer thread has stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, call, args))
        return await future

    def post(self, call: Callable[..., Any], *args: Any) -> None:
        """Run `call` in turn, answering nobody (it keeps its own failure)."""
        self._jobs.put((None, None, call, args))

    def stop(self) -> None:
        """Once every job handed over has run."""
        self.stopped = True
        self._jobs.put(None)
        self.thread.join()

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
        if future is None or future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
