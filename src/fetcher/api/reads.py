"""The API's reads: `QueueReader` calls (the read commands' own queries, so the API and the
CLI answer alike), each on a connection of its own in one of two threads of its own. A slow
read never blocks the event loop, and the reads never take the daemon's write connection; on
SQLite's WAL they never wait for a commit either."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fetcher.backends import open_reader
from fetcher.errors import StoreUnavailable
from fetcher.jobqueue import QueueReader
from fetcher.locations import Location

__all__ = ["ReadSide"]

_T = TypeVar("_T")
_THREADS = 2  # a long stats read leaves the feed's polls a thread


class ReadSide:
    def __init__(self, location: Location) -> None:
        self._location = location
        self._local = threading.local()
        self._readers: list[QueueReader] = []
        self._executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="fetcher-api-read")

    async def call(self, query: Callable[[QueueReader], _T]) -> _T:
        """`query(reader)` in a reading thread; `StoreUnavailable` if the store is away (the
        thread's connection is opened again at its next read)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, query)

    def _run(self, query: Callable[[QueueReader], _T]) -> _T:
        reader: QueueReader | None = getattr(self._local, "reader", None)
        if reader is None:
            try:
                reader = open_reader(self._location)
            except FileNotFoundError as exc:
                raise StoreUnavailable("read", str(exc)) from exc
            self._local.reader = reader
            self._readers.append(reader)
        try:
            return query(reader)
        except StoreUnavailable:
            self._local.reader = None
            self._readers.remove(reader)
            _close(reader)
            raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executor.shutdown)
        for reader in self._readers:
            _close(reader)
        self._readers.clear()


def _close(reader: QueueReader) -> None:
    with contextlib.suppress(Exception):  # a connection that broke is closed as far as it goes
        reader.close()
