"""The read side of the SQLite database (`QueueReader`): opened read-only, so it runs beside
the daemon and never creates or changes anything."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from fetcher.errors import SchemaTooOld, StoreUnavailable
from fetcher.rows import glob_to_like, result_row
from fetcher.rows import job_row as _job
from fetcher.sqlite.schema import BUSY_TIMEOUT_MS, SCHEMA_VERSION

if TYPE_CHECKING:  # the read commands load no more than they read
    from fetcher.jobqueue import HostStatsRow, JobRow, MinuteRow, ResultRow, WebhookRow
    from fetcher.model import Verdict

__all__ = ["RESULT_COLUMNS", "SqliteReader"]


class SqliteReader:
    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"no database at {path} (set FETCHER_DB, or submit URLs first)")
        try:
            # one thread at a time, not always the one that opened it (the API's read threads)
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("open", f"{path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        found = int(self._rows("PRAGMA user_version")[0][0])
        if found < SCHEMA_VERSION:
            self._db.close()
            raise SchemaTooOld(found, SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("read", str(exc)) from exc

    def host_stats(self) -> list[HostStatsRow]:
        return cast(
            "list[HostStatsRow]", [dict(row) for row in self._rows("SELECT * FROM host_stats")]
        )

    def queue_counts(self) -> dict[str, int]:
        return {row["state"]: row["jobs"] for row in self._rows("SELECT * FROM queue")}

    def requests_by_minute(self, since_minute: int) -> dict[int, int]:
        rows = self._rows(
            "SELECT minute, sum(requests) AS n FROM host_minutes WHERE minute >= ? GROUP BY minute",
            (since_minute,),
        )
        return {row["minute"]: row["n"] for row in rows}

    def recurring(self) -> tuple[int, float | None]:
        """How many jobs recur (not ended), and when the next waiting run is due."""
        rows = self._rows(
            "SELECT (SELECT count(*) FROM jobs WHERE every_s IS NOT NULL"
            " AND state IN ('queued', 'retrying', 'running')),"
            " (SELECT min(next_attempt_at) FROM jobs WHERE every_s IS NOT NULL"
            " AND state = 'retrying')"
        )
        return int(rows[0][0]), rows[0][1]

    def oldest_queued_at(self) -> float | None:
        # In id order from the start: it stops at the first queued job, past the finished
        # ones before it (the claim index, ordered by host first, would read them all).
        rows = self._rows(
            "SELECT created_at FROM jobs NOT INDEXED WHERE state = 'queued' ORDER BY id LIMIT 1"
        )
        return float(rows[0][0]) if rows else None

    def results(
        self, state: str | None, since: float | None, job_id: int | None = None
    ) -> Iterator[ResultRow]:
        clauses: list[str] = []
        params: list[object] = []
        if state:
            clauses.append("r.state = ?")
            params.append(state)
        if since is not None:
            clauses.append("r.finished_at >= ?")
            params.append(since)
        if job_id is not None:
            clauses.append("r.job_id = ?")
            params.append(job_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        try:
            for row in self._db.execute(f"{_RESULTS} {where} ORDER BY r.seq", params):
                yield _result(row)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("results", str(exc)) from exc

    def feed(
        self, after: int, limit: int, state: str | None = None, host: str | None = None
    ) -> list[ResultRow]:
        like = None if host is None else glob_to_like(host)
        rows = self._rows(
            f"{_RESULTS} WHERE r.seq > ? AND (? IS NULL OR r.state = ?)"
            " AND (? IS NULL OR r.host LIKE ? ESCAPE '\\') ORDER BY r.seq LIMIT ?",
            (after, state, state, host, like, limit),
        )
        return [_result(row) for row in rows]

    def job(self, job_id: int) -> JobRow | None:
        rows = self._rows(
            "SELECT j.id, j.url, j.method, j.host, j.state, j.attempts, j.priority,"
            " j.max_attempts, j.timeout_s AS timeout, j.retry, j.metadata, j.webhook, j.run,"
            " j.every_s AS every, j.adaptive, j.min_every_s AS min_every,"
            " j.max_every_s AS max_every, j.notify_changed,"
            f" {_iso('j.next_attempt_at')} AS next_attempt_at,"
            f" {_iso('j.created_at')} AS created_at, {_iso('j.updated_at')} AS updated_at,"
            " q.headers, length(q.body) AS body_bytes FROM jobs j"
            " LEFT JOIN job_requests q ON q.job_id = j.id WHERE j.id = ?",
            (job_id,),
        )
        if not rows:
            return None
        job = dict(rows[0])
        results = self._rows(
            f"{_RESULTS} WHERE r.job_id = ? ORDER BY r.run DESC LIMIT 1", (job_id,)
        )
        return _job(job, _result(results[0]) if results else None)

    def body(self, job_id: int) -> tuple[str | None, str | None] | None:
        rows = self._rows(
            "SELECT body_path, content_type FROM results WHERE job_id = ?"
            " ORDER BY run DESC LIMIT 1",
            (job_id,),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def webhooks(self, states: Sequence[str], limit: int) -> list[WebhookRow]:
        marks = ", ".join("?" * len(states))
        rows = self._rows(
            "SELECT id, event_id, job_id, run, url, state, attempts, last_status, last_error,"
            f" {_iso('next_attempt_at')} AS next_attempt_at,"
            f" {_iso('created_at')} AS created_at, {_iso('ended_at')} AS ended_at"
            f" FROM webhooks WHERE state IN ({marks}) ORDER BY id LIMIT ?",
            (*states, limit),
        )
        return cast("list[WebhookRow]", [dict(row) for row in rows])

    def minute_rows(self, since_minute: int) -> list[MinuteRow]:
        rows = self._rows(
            "SELECT host, minute * 60 AS at, requests, status_2xx, status_3xx, status_4xx,"
            " status_5xx, errors, bytes,"
            " round(latency_sum_ms / NULLIF(requests - errors, 0), 1) AS latency_avg_ms,"
            " round(latency_max_ms, 1) AS latency_max_ms"
            " FROM host_minutes WHERE minute >= ? ORDER BY host, minute",
            (since_minute,),
        )
        return cast("list[MinuteRow]", [dict(row) for row in rows])

    def robots(self, origins: Sequence[str]) -> list[Verdict]:
        from fetcher.model import Verdict

        marks = ", ".join("?" * len(origins))
        rows = self._rows(
            "SELECT origin, fetched_at, status, body, crawl_delay FROM robots_txt"
            f" WHERE origin IN ({marks})"
            " ORDER BY origin",
            tuple(origins),
        )
        return [Verdict(*row) for row in rows]


def _result(row: sqlite3.Row) -> ResultRow:
    return result_row(dict(row))


def _iso(column: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')"


RESULT_COLUMNS = (
    "r.job_id AS id, r.job_id, r.run, r.seq AS cursor, r.url, r.method, r.final_url, r.host,"
    " r.state, r.status, r.bytes, r.error, r.attempts, r.latency_ms, r.body_sha256,"
    f" r.body_path, r.changed, {_iso('r.finished_at')} AS finished_at, j.metadata"
)
_RESULTS = f"SELECT {RESULT_COLUMNS} FROM results r LEFT JOIN jobs j ON j.id = r.job_id"
