"""The read side of the SQLite database (`QueueReader`): opened read-only, so it runs beside
the daemon and never creates or changes anything."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from fetcher.errors import SchemaTooOld, StoreUnavailable
from fetcher.sqlite.schema import BUSY_TIMEOUT_MS, SCHEMA_VERSION

if TYPE_CHECKING:  # the read commands load no more than they read
    from fetcher.jobqueue import HostStatsRow, MinuteRow, ResultRow
    from fetcher.model import Verdict

__all__ = ["SqliteReader"]


class SqliteReader:
    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"no database at {path} (set FETCHER_DB, or submit URLs first)")
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
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
        sql = (
            "SELECT r.job_id AS id, r.job_id, r.url, r.method, r.final_url, r.host, r.state,"
            " r.status, r.bytes, r.error, r.attempts, r.latency_ms, r.body_sha256, r.body_path,"
            " strftime('%Y-%m-%dT%H:%M:%fZ', r.finished_at, 'unixepoch') AS finished_at,"
            " j.metadata FROM results r LEFT JOIN jobs j ON j.id = r.job_id"
            f" {where} ORDER BY r.finished_at, r.job_id"
        )
        try:
            for row in self._db.execute(sql, params):
                yield _result(dict(row))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable("results", str(exc)) from exc

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


def _result(row: dict[str, object]) -> ResultRow:
    """A result row, its metadata (JSON text in the table) as the object it was."""
    if isinstance(row["metadata"], str):
        row["metadata"] = json.loads(row["metadata"])
    return cast("ResultRow", row)
