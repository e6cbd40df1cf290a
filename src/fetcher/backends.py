"""Which backend holds a database: a SQLite file, or a PostgreSQL URL. The one place that
chooses (each backend is imported only when its database is opened)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fetcher.clocks import Clocks

if TYPE_CHECKING:
    from fetcher.jobqueue import JobQueue, QueueReader
    from fetcher.locations import Location

__all__ = ["open_queue", "open_reader", "schema_version"]


async def open_queue(
    db: Location,
    *,
    cache_mib: int = 8,
    busy_timeout_s: float = 10.0,
    lease_s: float = 90.0,
    clocks: Clocks | None = None,
    webhook_url: str | None = None,
) -> JobQueue:
    """The queue in database `db`, created or migrated as needed. `lease_s`: how long a host
    stays leased without a renewal (PostgreSQL); `webhook_url`: told of every job that names
    no webhook of its own (FETCHER_WEBHOOK_URL)."""
    clocks = clocks or Clocks()
    if not isinstance(db, Path):
        from fetcher.postgres.store import PostgresQueue

        return await PostgresQueue.open(
            db,
            busy_timeout_s=busy_timeout_s,
            lease_s=lease_s,
            clocks=clocks,
            webhook_url=webhook_url,
        )
    from fetcher.sqlite.store import SqliteQueue

    return await SqliteQueue.open(
        db,
        cache_mib=cache_mib,
        busy_timeout_s=busy_timeout_s,
        clocks=clocks,
        webhook_url=webhook_url,
    )


def open_reader(db: Location) -> QueueReader:
    """The read side of database `db`; never creates or changes anything."""
    if not isinstance(db, Path):
        from fetcher.postgres.reader import PostgresReader

        return PostgresReader(db)
    from fetcher.sqlite.reader import SqliteReader

    return SqliteReader(db)


def schema_version(db: Location) -> int:
    """The schema version this fetcher brings for the backend of `db`."""
    if not isinstance(db, Path):
        from fetcher.postgres.schema import SCHEMA_VERSION as POSTGRES_VERSION

        return POSTGRES_VERSION
    from fetcher.sqlite.schema import SCHEMA_VERSION

    return SCHEMA_VERSION
