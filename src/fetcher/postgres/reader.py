"""The read side of the PostgreSQL queue (`QueueReader`): plain calls, each a read-only query
run on a private event loop, so the commands keep their shape whatever the backend."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncpg

from fetcher.errors import SchemaTooOld, StoreUnavailable
from fetcher.locations import masked
from fetcher.postgres.connection import unavailable
from fetcher.postgres.schema import SCHEMA_VERSION
from fetcher.rows import glob_to_like, job_row, result_row

if TYPE_CHECKING:  # the read commands load no more than they read
    from fetcher.jobqueue import HostStatsRow, JobRow, MinuteRow, ResultRow, WebhookRow
    from fetcher.model import Verdict

__all__ = ["RESULT_COLUMNS", "PostgresReader"]

_T = TypeVar("_T")
_PAGE = 5000  # results rows per query: `fetcher results` streams, whatever the table's size


class PostgresReader:
    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self._url = url
        self._loop = asyncio.new_event_loop()
        try:
            self._db: asyncpg.Connection = self._run(
                "open",
                asyncpg.connect(
                    url,
                    timeout=timeout_s,
                    server_settings={
                        "default_transaction_read_only": "on",
                        "application_name": "fetcher (read)",
                    },
                ),
            )
            found = self._run("open", self._db.fetchval("SELECT to_regclass('fetcher_schema')"))
        except BaseException:
            self._loop.close()
            raise
        if found is None:
            self.close()
            raise FileNotFoundError(
                f"no fetcher queue in {masked(url)} (set FETCHER_DB, or submit URLs first)"
            )
        version = self._run("open", self._db.fetchval("SELECT max(version) FROM fetcher_schema"))
        if version < SCHEMA_VERSION:
            self.close()
            raise SchemaTooOld(version, SCHEMA_VERSION)

    def _run(self, operation: str, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            return self._loop.run_until_complete(coro)
        except Exception as exc:
            if unavailable(exc) or isinstance(exc, asyncpg.InvalidCatalogNameError):
                raise StoreUnavailable(operation, f"{masked(self._url)}: {exc}") from exc
            raise

    def close(self) -> None:
        if not self._loop.is_closed():
            if hasattr(self, "_db"):
                self._run("close", self._db.close())
            self._loop.close()

    def _rows(self, sql: str, *args: object) -> list[dict[str, Any]]:
        return [dict(row) for row in self._run("read", self._db.fetch(sql, *args))]

    def host_stats(self) -> list[HostStatsRow]:
        return cast("list[HostStatsRow]", self._rows("SELECT * FROM host_stats"))

    def queue_counts(self) -> dict[str, int]:
        return {row["state"]: int(row["jobs"]) for row in self._rows("SELECT * FROM queue")}

    def requests_by_minute(self, since_minute: int) -> dict[int, int]:
        rows = self._rows(
            "SELECT minute, sum(requests) AS n FROM host_minutes WHERE minute >= $1"
            " GROUP BY minute",
            since_minute,
        )
        return {row["minute"]: int(row["n"]) for row in rows}

    def recurring(self) -> tuple[int, float | None]:
        """How many jobs recur (not ended), and when the next waiting run is due."""
        rows = self._rows(
            "SELECT (SELECT count(*) FROM jobs WHERE every_s IS NOT NULL"
            " AND state IN ('queued', 'retrying', 'running')) AS n,"
            " (SELECT min(next_attempt_at) FROM jobs WHERE every_s IS NOT NULL"
            " AND state = 'retrying') AS at"
        )
        return int(rows[0]["n"]), rows[0]["at"]

    def oldest_queued_at(self) -> float | None:
        # the first queued job of each host with a backlog, by the claim index: a walk of the
        # jobs in id order would pass every finished job before the first queued one
        rows = self._rows(
            "SELECT min((SELECT created_at FROM jobs WHERE state = 'queued' AND host = h.host"
            " ORDER BY id LIMIT 1)) AS at FROM hosts h WHERE backlog > 0"
        )
        return float(rows[0]["at"]) if rows and rows[0]["at"] is not None else None

    def results(
        self, state: str | None, since: float | None, job_id: int | None = None
    ) -> Iterator[ResultRow]:
        """Finished runs, oldest first, a page at a time (keyset: no offset to skip)."""
        after: tuple[float, int, int] = (-1.0, -1, -1)
        if since is not None:
            after = (since - 1e-9, -1, -1)
        while True:
            page = self._rows(
                f"{_RESULTS}, r.finished_at AS at {_FROM}"
                " WHERE (r.finished_at, r.job_id, r.run) > ($1, $2, $6)"
                " AND ($3::text IS NULL OR r.state = $3)"
                " AND ($5::bigint IS NULL OR r.job_id = $5)"
                " ORDER BY r.finished_at, r.job_id, r.run LIMIT $4",
                after[0],
                after[1],
                state,
                _PAGE,
                job_id,
                after[2],
            )
            for row in page:
                at = row.pop("at")  # the page's place, unrounded
                yield result_row(row)
            if len(page) < _PAGE:
                return
            after = (at, page[-1]["job_id"], page[-1]["run"])

    def feed(
        self, after: int, limit: int, state: str | None = None, host: str | None = None
    ) -> list[ResultRow]:
        rows = self._rows(
            f"{_RESULTS} {_FROM} WHERE r.seq > $1 AND ($2::text IS NULL OR r.state = $2)"
            " AND ($3::text IS NULL OR r.host LIKE $3 ESCAPE '\\')"
            " ORDER BY r.seq LIMIT $4",
            after,
            state,
            None if host is None else glob_to_like(host),
            limit,
        )
        return [result_row(row) for row in rows]

    def job(self, job_id: int) -> JobRow | None:
        rows = self._rows(
            "SELECT j.id, j.url, j.method, j.host, j.state, j.attempts, j.priority,"
            " j.max_attempts, j.timeout_s AS timeout, j.retry, j.metadata, j.webhook, j.run,"
            " j.every_s AS every, j.adaptive, j.min_every_s AS min_every,"
            " j.max_every_s AS max_every, j.notify_changed,"
            " fetcher_iso(j.next_attempt_at) AS next_attempt_at,"
            " fetcher_iso(j.created_at) AS created_at, fetcher_iso(j.updated_at) AS updated_at,"
            " q.headers, length(q.body) AS body_bytes FROM jobs j"
            " LEFT JOIN job_requests q ON q.job_id = j.id WHERE j.id = $1",
            job_id,
        )
        if not rows:
            return None
        latest = self._rows(
            f"{_RESULTS} {_FROM} WHERE r.job_id = $1 ORDER BY r.run DESC LIMIT 1",
            job_id,
        )
        return job_row(rows[0], result_row(latest[0]) if latest else None)

    def body(self, job_id: int) -> tuple[str | None, str | None] | None:
        rows = self._rows(
            "SELECT body_path, content_type FROM results WHERE job_id = $1"
            " ORDER BY run DESC LIMIT 1",
            job_id,
        )
        return (rows[0]["body_path"], rows[0]["content_type"]) if rows else None

    def webhooks(self, states: Sequence[str], limit: int) -> list[WebhookRow]:
        rows = self._rows(
            "SELECT id, event_id, job_id, run, url, state, attempts, last_status, last_error,"
            " fetcher_iso(next_attempt_at) AS next_attempt_at,"
            " fetcher_iso(created_at) AS created_at, fetcher_iso(ended_at) AS ended_at"
            " FROM webhooks WHERE state = ANY($1::text[]) ORDER BY id LIMIT $2",
            list(states),
            limit,
        )
        return cast("list[WebhookRow]", rows)

    def minute_rows(self, since_minute: int) -> list[MinuteRow]:
        rows = self._rows(
            "SELECT host, minute * 60 AS at, requests, status_2xx, status_3xx, status_4xx,"
            " status_5xx, errors, bytes,"
            " round((latency_sum_ms / NULLIF(requests - errors, 0))::numeric, 1)::float8"
            " AS latency_avg_ms, round(latency_max_ms::numeric, 1)::float8 AS latency_max_ms"
            " FROM host_minutes WHERE minute >= $1 ORDER BY host, minute",
            since_minute,
        )
        return cast("list[MinuteRow]", rows)

    def robots(self, origins: Sequence[str]) -> list[Verdict]:
        from fetcher.model import Verdict

        rows = self._run(
            "read",
            self._db.fetch(
                "SELECT origin, fetched_at, status, body, crawl_delay FROM robots_txt"
                " WHERE origin = ANY($1::text[]) ORDER BY origin",
                list(origins),
            ),
        )
        return [Verdict(*row) for row in rows]


RESULT_COLUMNS = (
    "r.job_id AS id, r.job_id, r.run, r.seq AS cursor, r.url, r.method, r.final_url, r.host,"
    " r.state, r.status, r.bytes, r.error, r.attempts, r.latency_ms, r.body_sha256,"
    " r.body_path, r.changed, fetcher_iso(r.finished_at) AS finished_at, j.metadata"
)
_RESULTS = f"SELECT {RESULT_COLUMNS}"
_FROM = "FROM results r LEFT JOIN jobs j ON j.id = r.job_id"
