"""The results feed's long poll: a reader waits for a word that results committed (this
daemon's recorder, its cancels, or, on PostgreSQL, a NOTIFY from any daemon), then reads again.
It reads again each second too, whatever it heard: a word can be missed (a connection that
broke, a `fetcher cancel` from a shell on SQLite), a result never is.

The feed's order is commit order: each result's `cursor` is a number taken at the end of the
transaction that commits it, under a lock held to the commit (`stamp_feed`), so whoever has
seen a cursor has seen every smaller one, whichever daemon committed it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fetcher.jobqueue import ResultRow
from fetcher.supervisor import wait_set

__all__ = ["FeedWatch"]

_RECHECK_S = 1.0


class FeedWatch:
    """Who waits for results, and the word that wakes them all."""

    def __init__(self) -> None:
        self._committed = asyncio.Event()
        self._closing = False

    def close(self) -> None:
        """The daemon stops: every long poll answers with what it has now."""
        self._closing = True
        self.wake()

    def wake(self) -> None:
        """Results committed: every waiting reader reads again."""
        self._committed.set()
        self._committed = asyncio.Event()  # the next waiters wait for the next word

    async def poll(
        self, read: Callable[[], Awaitable[list[ResultRow]]], wait_s: float
    ) -> list[ResultRow]:
        """`read()` until it finds results or `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        while True:
            committed = self._committed  # taken before the read: a word during it counts
            rows = await read()
            left = deadline - time.monotonic()
            if rows or left <= 0 or self._closing:
                return rows
            await wait_set(committed, min(left, _RECHECK_S))
