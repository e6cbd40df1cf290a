"""The SQL a batch commit runs on SQLite, one short method per table (`fetcher.batch.Tables`).

Each write is one statement per batch, its rows a JSON array bound as one parameter and read
back with `json_each`: with executemany, statement set-up and the job_counts trigger program ran
once per row (BENCHMARKS.md, "one statement per batch").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import aiosqlite
import orjson

from fetcher.counters import COUNTER_FIELDS, MINUTE_FIELDS, Tally
from fetcher.model import CANCELLED, JobState, Outcome, Verdict

__all__ = ["SqliteTables", "field", "fields", "json_array"]


def json_array(items: Iterable[object]) -> str:
    """A batch as one parameter, read back in SQL with json_each (text: SQLite 3.45+ would
    take a blob for its binary JSON)."""
    return orjson.dumps(list(items)).decode()


def field(i: int) -> str:
    """Column i of a row of `json_each(?) AS v` (json_extract: SQLite 3.35 has no ->>)."""
    return f"json_extract(v.value, '$[{i}]')"


def fields(first: int, last: int) -> str:
    """Columns `first` … `last` of a row of `json_each(?) AS v`."""
    return ", ".join(field(i) for i in range(first, last + 1))


class SqliteTables:
    """One batch's writes, on `db` inside the caller's transaction, for daemon `owner`: a job
    whose lease another daemon took (`jobs.lease_owner`) is left as it is."""

    def __init__(
        self, db: aiosqlite.Connection, owner: str, now: float, webhook: str | None = None
    ) -> None:
        self._db = db
        self._owner = owner
        self._now = now
        self._webhook = webhook  # FETCHER_WEBHOOK_URL: told of the jobs that name none

    async def insert_results(self, finals: Sequence[Outcome]) -> None:
        rows = json_array(
            (o.job_id, o.final_url, o.state.value, o.status, o.bytes, o.error, o.attempts,
             o.latency_ms, o.body_sha256, o.body_path, o.content_type, o.changed)
            for o in finals
        )  # fmt: skip
        await self._db.execute(
            "INSERT OR REPLACE INTO results (job_id, run, url, host, final_url, state, status,"
            " bytes, error, attempts, latency_ms, body_sha256, body_path, content_type,"
            " changed, finished_at, method)"
            f" SELECT jobs.id, jobs.run, jobs.url, jobs.host, {fields(1, 11)}, ?, jobs.method"
            f" FROM json_each(?) AS v JOIN jobs ON jobs.id = {field(0)}"
            " WHERE jobs.lease_owner = ?",
            (self._now, rows, self._owner),
        )

    async def enqueue_webhooks(self, job_ids: Sequence[int]) -> None:
        """An event for each of these jobs' latest run that names a webhook (or for every job,
        with FETCHER_WEBHOOK_URL), committed with the result it tells of."""
        await self._db.execute(
            "INSERT INTO webhooks (event_id, job_id, run, url, next_attempt_at, created_at)"
            " SELECT 'msg_job' || id || '_run' || run, id, run, coalesce(webhook, ?), ?, ?"
            " FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
            " AND coalesce(webhook, ?) IS NOT NULL AND (NOT notify_changed OR EXISTS"
            " (SELECT 1 FROM results r WHERE r.job_id = jobs.id AND r.run = jobs.run"
            " AND r.changed IS NOT 0)) ON CONFLICT (event_id) DO NOTHING",
            (self._webhook, self._now, self._now, json_array(job_ids), self._webhook),
        )

    async def stamp_feed(self) -> None:
        """The results of this transaction take their places in commit order (the writer's
        lock is the transaction's: one after the largest, in job order)."""
        cursor = await self._db.execute("SELECT coalesce(max(seq), 0) FROM results")
        base = (await cursor.fetchone() or (0,))[0]
        await self._db.execute(
            "UPDATE results SET seq = ? + s.n FROM (SELECT job_id, run,"
            " row_number() OVER (ORDER BY job_id, run) AS n FROM results WHERE seq IS NULL) AS s"
            " WHERE results.job_id = s.job_id AND results.run = s.run",
            (base,),
        )

    async def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        cursor = await self._db.execute(
            "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND cancel"
            " AND lease_owner = ?",
            (json_array(job_ids), self._owner),
        )
        return {row[0] for row in await cursor.fetchall()}

    async def cancelled(self, job_ids: Sequence[int]) -> None:
        """The results of jobs cancelled before they were claimed."""
        await self._db.execute(
            "INSERT OR REPLACE INTO results (job_id, run, url, host, final_url, state, status,"
            " bytes, error, attempts, latency_ms, body_sha256, body_path, finished_at, method)"
            " SELECT id, run, url, host, NULL, 'cancelled', NULL, 0, ?, attempts, NULL, NULL,"
            " NULL, ?, method FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
            (CANCELLED, self._now, json_array(job_ids)),
        )

    async def settle_jobs(self, outcomes: Sequence[Outcome]) -> None:
        """Each job to its new state; a recurring one whose run ended back to `retrying` for
        its next run."""
        again = [o for o in outcomes if o.next_run_at is not None]
        if again:
            runs = json_array(
                (o.job_id, o.next_run_at, o.interval_s,
                 o.body_sha256 if o.state is JobState.DONE else None)
                for o in again
            )  # fmt: skip
            await self._db.execute(
                f"UPDATE jobs SET state = 'retrying', attempts = 0, next_attempt_at = {field(1)},"
                f" run = run + 1, every_s = {field(2)}, last_sha256 = coalesce({field(3)},"
                " last_sha256), lease_owner = NULL, lease_until = NULL, updated_at = ?"
                f" FROM json_each(?) AS v WHERE jobs.id = {field(0)} AND jobs.lease_owner = ?",
                (self._now, runs, self._owner),
            )
            outcomes = [o for o in outcomes if o.next_run_at is None]
            if not outcomes:
                return
        rows = json_array(
            (o.job_id, o.state.value, o.attempts, o.next_attempt_at) for o in outcomes
        )
        await self._db.execute(
            f"UPDATE jobs SET state = {field(1)}, attempts = {field(2)},"
            f" next_attempt_at = {field(3)}, lease_owner = NULL, lease_until = NULL,"
            f" updated_at = ? FROM json_each(?) AS v"
            f" WHERE jobs.id = {field(0)} AND jobs.lease_owner = ?",
            (self._now, rows, self._owner),
        )

    async def read_counters(self, hosts: Sequence[str]) -> dict[str, Tally]:
        cursor = await self._db.execute(
            f"SELECT host, {', '.join(COUNTER_FIELDS)} FROM host_counters"
            " WHERE host IN (SELECT value FROM json_each(?))",
            (json_array(hosts),),
        )
        return {row[0]: Tally(*row[1:]) for row in await cursor.fetchall()}

    async def write_counters(self, counters: Mapping[str, Tally]) -> None:
        await self._db.executemany(
            f"INSERT OR REPLACE INTO host_counters (host, {', '.join(COUNTER_FIELDS)})"
            f" VALUES (?, {', '.join('?' * len(COUNTER_FIELDS))})",
            [(host, *c.values()) for host, c in counters.items()],
        )

    async def add_minutes(self, minutes: Mapping[tuple[str, int], Tally]) -> None:
        added = ", ".join(f"{f} = {f} + excluded.{f}" for f in MINUTE_FIELDS[:-1])
        await self._db.executemany(
            f"INSERT INTO host_minutes VALUES ({', '.join('?' * (len(MINUTE_FIELDS) + 2))})"
            f" ON CONFLICT (host, minute) DO UPDATE SET {added},"
            " latency_max_ms = max(latency_max_ms, excluded.latency_max_ms)",
            [
                (host, minute, *c.values()[: len(MINUTE_FIELDS)])
                for (host, minute), c in minutes.items()
            ],
        )

    async def pause_hosts(self, pauses: Mapping[str, float]) -> None:
        await self._db.executemany(
            "INSERT INTO host_pauses VALUES (?, ?) ON CONFLICT (host)"
            " DO UPDATE SET until = max(until, excluded.until)",
            list(pauses.items()),
        )

    async def keep_validators(self, validated: Sequence[Outcome]) -> None:
        """The job's own URL, answered without a redirect."""
        rows = json_array(
            (o.job_id, o.etag, o.last_modified, o.body_sha256, o.body_path) for o in validated
        )
        await self._db.execute(
            f"INSERT OR REPLACE INTO validators SELECT jobs.url, {fields(1, 4)}"
            f" FROM json_each(?) AS v JOIN jobs ON jobs.id = {field(0)}"
            " JOIN results ON results.job_id = jobs.id AND results.run = jobs.run"
            " WHERE results.final_url = jobs.url",
            (rows,),
        )

    async def keep_robots(self, verdicts: Sequence[Verdict]) -> None:
        await self._db.executemany(
            "INSERT OR REPLACE INTO robots_txt VALUES (?, ?, ?, ?, ?, ?)",
            [(v.origin, v.fetched_at, v.status, v.crawl_delay, v.size, v.body) for v in verdicts],
        )
