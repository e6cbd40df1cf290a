"""Connections to PostgreSQL: how each is opened, which of its errors pass, and the job-count
shard each one writes (`fetcher.shard`: every connection's transactions add to rows of their
own in `job_counts`, so no two connections of any daemons wait on one count row)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress

import asyncpg

from fetcher.errors import StoreUnavailable

__all__ = [
    "Channel", "commits_shard", "connect", "fold_shards", "listen", "row_count", "shards_of",
    "unavailable",
]  # fmt: skip

# SQLSTATE classes of trouble that passes: connection exception, transaction rollback
# (deadlock, serialization), insufficient resources (disk full, too many connections),
# operator intervention (shutdown, restart, cancelled); and lock_not_available
_PASSING = ("08", "40", "53", "57")
_NO_ANSWER_S = 60.0  # a statement's answer waited for past the lock timeout


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` is trouble that passes (the server away, a lock, a deadlock…)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _PASSING or state == "55P03"
    # InternalClientError: a connection the server cut in the middle of an operation can be
    # left believing that operation is still under way ("cannot switch to state 15; another
    # operation (2) is in progress"): it is dropped and opened again, like any broken one
    return isinstance(
        exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError | TimeoutError
    )


async def connect(url: str, *, shard: str, timeout_s: float) -> asyncpg.Connection:
    """A connection whose transactions count jobs in `shard`, and whose lock waits end after
    `timeout_s` (as SQLite's busy timeout). A statement that gets no answer for a minute more
    (a server cut off without a reset) counts as the server away, and the connection is
    opened again."""
    return await asyncpg.connect(
        url,
        timeout=timeout_s,
        command_timeout=timeout_s + _NO_ANSWER_S,
        server_settings={
            "fetcher.shard": shard,
            "lock_timeout": f"{round(timeout_s * 1000)}ms",
            # every statement planned for its own arguments and the tables as they are now: a
            # generic plan made while `hosts` or `host_counters` was small scanned them whole
            # ever after (100,000 hosts: 113 ms a batch commit instead of 1)
            "plan_cache_mode": "force_custom_plan",
            "application_name": "fetcher",
        },
    )


class Channel:
    """One connection and the lock that gives it to one transaction at a time; opened when
    first needed, and again after it broke."""

    def __init__(
        self, url: str, shard: str, lock_s: float, connection: asyncpg.Connection | None = None
    ) -> None:
        self._url = url
        self._shard = shard
        self._lock_s = lock_s
        self.db = connection
        self.lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self, operation: str) -> AsyncIterator[asyncpg.Connection]:
        """One transaction under `lock`; trouble that passes becomes `StoreUnavailable`."""
        async with self.lock:
            try:
                if self.db is None or self.db.is_closed():
                    self.db = await connect(self._url, shard=self._shard, timeout_s=self._lock_s)
                async with self.db.transaction():
                    yield self.db
            except Exception as exc:
                if not unavailable(exc):
                    raise
                if not isinstance(exc, asyncpg.PostgresError) or exc.sqlstate[:2] in ("08", "57"):
                    self.drop()
                raise StoreUnavailable(operation, str(exc) or type(exc).__name__) from exc

    def drop(self) -> None:
        if self.db is not None:
            self.db.terminate()
            self.db = None

    async def close(self) -> None:
        if self.db is not None:
            with suppress(Exception):
                await self.db.close()
            self.db = None


def commits_shard(owner: str) -> str:
    """The shard of a daemon's commits connection (its main connection's is `owner`)."""
    return f"{owner}.commits"


def shards_of(daemons: Iterable[str]) -> list[str]:
    """The job-count shards of `daemons` (each has two: its two connections')."""
    return [shard for owner in daemons for shard in (owner, commits_shard(owner))]


async def fold_shards(db: asyncpg.Connection, shards: list[str]) -> None:
    """Add the job counts of `shards` to the shared shard and drop their rows (a daemon that
    stopped, or died: the sums stay right, the table small)."""
    await db.execute(
        "WITH gone AS (DELETE FROM job_counts WHERE shard = ANY($1::text[])"
        " RETURNING state, n)"
        " INSERT INTO job_counts AS c (shard, state, n)"
        " SELECT 'shared', state, sum(n) FROM gone GROUP BY state"
        " ON CONFLICT (shard, state) DO UPDATE SET n = c.n + excluded.n",
        shards,
    )


def row_count(status: str) -> int:
    """The rows a command changed, from its status (`UPDATE 3`, `INSERT 0 5`)."""
    return int(status.rsplit(" ", 1)[1])


async def listen(url: str, channel: str, wake: Callable[[], None]) -> None:
    """`wake()` at each NOTIFY on `channel`, on a connection of its own, opened again after
    it broke (and `wake()` then too: what was said meanwhile went unheard); until cancelled."""
    while True:
        try:
            await _listen_once(url, channel, wake)
        except Exception as exc:
            if not unavailable(exc):
                raise
        await asyncio.sleep(2.0)


async def _listen_once(url: str, channel: str, wake: Callable[[], None]) -> None:
    lost = asyncio.Event()
    db = await asyncpg.connect(url, timeout=10.0)
    try:
        db.add_termination_listener(lambda _db: lost.set())
        await db.add_listener(channel, lambda *_: wake())
        wake()
        await lost.wait()
    finally:
        db.terminate()
