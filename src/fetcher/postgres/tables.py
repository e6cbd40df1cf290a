"""The SQL a batch commit runs on PostgreSQL, one short method per table
(`fetcher.batch.Tables`). Rows go as arrays (`unnest`), one statement per table; every
multi-row write takes its host rows in host order, so daemons never deadlock on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from fetcher.counters import COUNTER_FIELDS, MINUTE_FIELDS, Tally
from fetcher.model import CANCELLED, JobState, Outcome, Verdict

__all__ = ["PostgresTables"]


class PostgresTables:
    """One batch's writes, on `db` inside the caller's transaction, for daemon `owner` (whose
    host leases the caller has checked: `Batch.only`)."""

    def __init__(
        self, db: asyncpg.Connection, owner: str, now: float, webhook: str | None = None
    ) -> None:
        self._db = db
        self._owner = owner
        self._now = now
        self._webhook = webhook  # FETCHER_WEBHOOK_URL: told of the jobs that name none
        self._unstamped: list[tuple[int, int]] = []  # results inserted here, not yet in the feed

    async def insert_results(self, finals: Sequence[Outcome]) -> None:
        await self._keep_unstamped(
            "INSERT INTO results (job_id, run, url, host, final_url, state, status, bytes,"
            " error, attempts, latency_ms, body_sha256, body_path, finished_at, method,"
            " content_type, changed)"
            " SELECT jobs.id, jobs.run, jobs.url, jobs.host, v.final_url, v.state, v.status,"
            " v.bytes, v.error, v.attempts, v.latency_ms, v.sha, v.path, $11, jobs.method, v.ct,"
            " v.changed FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[],"
            " $5::bigint[], $6::text[], $7::int[], $8::float8[], $9::text[], $10::text[],"
            " $13::text[], $14::bool[])"
            " AS v(id, final_url, state, status, bytes, error, attempts, latency_ms,"
            " sha, path, ct, changed) JOIN jobs ON jobs.id = v.id AND jobs.lease_owner = $12"
            " ON CONFLICT (job_id, run) DO UPDATE SET final_url = excluded.final_url,"
            " state = excluded.state, status = excluded.status, bytes = excluded.bytes,"
            " error = excluded.error, attempts = excluded.attempts,"
            " latency_ms = excluded.latency_ms, body_sha256 = excluded.body_sha256,"
            " body_path = excluded.body_path, finished_at = excluded.finished_at,"
            " content_type = excluded.content_type, changed = excluded.changed"
            " RETURNING job_id, run, seq",
            [o.job_id for o in finals],
            [o.final_url for o in finals],
            [o.state.value for o in finals],
            [o.status for o in finals],
            [o.bytes for o in finals],
            [o.error for o in finals],
            [o.attempts for o in finals],
            [o.latency_ms for o in finals],
            [o.body_sha256 for o in finals],
            [o.body_path for o in finals],
            self._now,
            self._owner,
            [o.content_type for o in finals],
            [o.changed for o in finals],
        )

    async def enqueue_webhooks(self, job_ids: Sequence[int]) -> None:
        """An event for each of these jobs' latest run that names a webhook (or for every job,
        with FETCHER_WEBHOOK_URL), committed with the result it tells of."""
        await self._db.execute(
            "INSERT INTO webhooks (event_id, job_id, run, url, next_attempt_at, created_at)"
            " SELECT 'msg_job' || id || '_run' || run, id, run, coalesce(webhook, $2), $3, $3"
            " FROM jobs WHERE id = ANY($1::bigint[]) AND coalesce(webhook, $2) IS NOT NULL"
            " AND (NOT notify_changed OR EXISTS (SELECT 1 FROM results r WHERE"
            " r.job_id = jobs.id AND r.run = jobs.run AND r.changed IS NOT false))"
            " ON CONFLICT (event_id) DO NOTHING",
            list(job_ids),
            self._webhook,
            self._now,
        )

    async def stamp_feed(self) -> None:
        """The results of this transaction take their places in commit order: numbers taken
        under `feed_clock`'s row lock, held to the commit, so that a transaction that numbers
        after this one also commits after it (a reader who sees a number has seen every smaller
        one). Taken last, it holds other daemons' commits back the least. Then a word to the
        API's long polls, once a batch."""
        if self._unstamped:
            await self._db.execute(
                "WITH todo AS (SELECT job_id, run, row_number() OVER (ORDER BY job_id, run) AS n"
                " FROM unnest($1::bigint[], $2::int[]) AS t(job_id, run)),"
                " c AS (UPDATE feed_clock SET n = n + $3 RETURNING n - $3 AS base)"
                " UPDATE results r SET seq = c.base + todo.n FROM todo, c"
                " WHERE r.job_id = todo.job_id AND r.run = todo.run",
                [job_id for job_id, _ in self._unstamped],
                [run for _, run in self._unstamped],
                len(self._unstamped),
            )
            self._unstamped = []
        await self._db.execute("NOTIFY fetcher_results")

    async def _keep_unstamped(self, insert: str, *args: object) -> None:
        """Run a results `insert` (RETURNING job_id, run, seq); the rows it added, still
        without a place in the feed, are the ones `stamp_feed` numbers: by their keys, not
        by a search for `seq IS NULL`, which walked every dead row version the results'
        updates left in the index until the next vacuum (BENCHMARKS.md, "feed stamp")."""
        rows = await self._db.fetch(insert, *args)
        self._unstamped.extend((row[0], row[1]) for row in rows if row[2] is None)

    async def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        rows = await self._db.fetch(
            "SELECT id FROM jobs WHERE id = ANY($1::bigint[]) AND cancel AND lease_owner = $2",
            list(job_ids),
            self._owner,
        )
        return {row[0] for row in rows}

    async def cancelled(self, job_ids: Sequence[int]) -> None:
        """The results of jobs cancelled before they were claimed."""
        await self._keep_unstamped(
            "INSERT INTO results (job_id, run, url, host, final_url, state, status, bytes, error,"
            " attempts, latency_ms, body_sha256, body_path, finished_at, method)"
            " SELECT id, run, url, host, NULL, 'cancelled', NULL, 0, $3, attempts, NULL, NULL,"
            " NULL, $2, method FROM jobs WHERE id = ANY($1::bigint[])"
            " ON CONFLICT (job_id, run) DO UPDATE SET state = excluded.state,"
            " error = excluded.error, finished_at = excluded.finished_at"
            " RETURNING job_id, run, seq",
            list(job_ids),
            self._now,
            CANCELLED,
        )

    async def settle_jobs(self, outcomes: Sequence[Outcome]) -> None:
        """Each job to its new state; a moved one (a redirect to a host another daemon holds)
        to its new host's queue, with the URL, hop count and method it goes on with; a
        recurring one whose run ended back to `retrying` for its next run."""
        again = [o for o in outcomes if o.next_run_at is not None]
        if again:
            await self._db.execute(
                "UPDATE jobs SET state = 'retrying', attempts = 0, next_attempt_at = v.at,"
                " run = jobs.run + 1, every_s = v.every, last_sha256 = coalesce(v.sha,"
                " jobs.last_sha256), lease_owner = NULL, lease_epoch = NULL, updated_at = $5,"
                " host = coalesce(jobs.home_host, jobs.host), home_host = NULL,"
                " resume_url = NULL, resume_method = NULL, hops = 0"
                " FROM unnest($1::bigint[], $2::float8[], $3::float8[], $4::text[])"
                " AS v(id, at, every, sha) WHERE jobs.id = v.id AND jobs.lease_owner = $6",
                [o.job_id for o in again],
                [o.next_run_at for o in again],
                [o.interval_s for o in again],
                [o.body_sha256 if o.state is JobState.DONE else None for o in again],
                self._now,
                self._owner,
            )
            outcomes = [o for o in outcomes if o.next_run_at is None]
            if not outcomes:
                return
        await self._db.execute(
            "UPDATE jobs SET state = v.state, attempts = v.attempts,"
            " next_attempt_at = v.next_at, lease_owner = NULL, lease_epoch = NULL,"
            " updated_at = $7, host = coalesce(v.host, jobs.host), home_host = CASE WHEN"
            " v.host IS NULL THEN jobs.home_host ELSE coalesce(jobs.home_host, jobs.host) END,"
            " resume_url = CASE WHEN v.host IS NULL THEN jobs.resume_url ELSE v.resume END,"
            " resume_method = CASE WHEN v.host IS NULL THEN jobs.resume_method"
            " ELSE v.method END, hops = coalesce(v.hops, jobs.hops)"
            " FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[], $5::text[],"
            " $6::text[], $8::int[], $10::text[])"
            " AS v(id, state, attempts, next_at, host, resume, hops, method)"
            " WHERE jobs.id = v.id AND jobs.lease_owner = $9",
            [o.job_id for o in outcomes],
            [o.state.value for o in outcomes],
            [o.attempts for o in outcomes],
            [o.next_attempt_at for o in outcomes],
            [o.moved_to.host_key if o.moved_to else None for o in outcomes],
            [o.moved_to.url if o.moved_to else None for o in outcomes],
            self._now,
            [o.hops if o.moved_to else None for o in outcomes],
            self._owner,
            [o.moved_method for o in outcomes],
        )

    async def read_counters(self, hosts: Sequence[str]) -> dict[str, Tally]:
        rows = await self._db.fetch(
            f"SELECT host, {', '.join(COUNTER_FIELDS)} FROM host_counters"
            " WHERE host = ANY($1::text[])",
            list(hosts),
        )
        return {row[0]: Tally(*row[1:]) for row in rows}

    async def write_counters(self, counters: Mapping[str, Tally]) -> None:
        marks = ", ".join(f"${i}" for i in range(2, len(COUNTER_FIELDS) + 2))
        await self._db.executemany(
            f"INSERT INTO host_counters (host, {', '.join(COUNTER_FIELDS)}) VALUES ($1, {marks})"
            " ON CONFLICT (host) DO UPDATE SET "
            + ", ".join(f"{f} = excluded.{f}" for f in COUNTER_FIELDS),
            [(host, *c.values()) for host, c in sorted(counters.items())],
        )

    async def add_minutes(self, minutes: Mapping[tuple[str, int], Tally]) -> None:
        added = ", ".join(f"{f} = m.{f} + excluded.{f}" for f in MINUTE_FIELDS[:-1])
        marks = ", ".join(f"${i}" for i in range(1, len(MINUTE_FIELDS) + 3))
        await self._db.executemany(
            f"INSERT INTO host_minutes AS m VALUES ({marks})"
            f" ON CONFLICT (host, minute) DO UPDATE SET {added},"
            " latency_max_ms = greatest(m.latency_max_ms, excluded.latency_max_ms)",
            [
                (host, minute, *c.values()[: len(MINUTE_FIELDS)])
                for (host, minute), c in sorted(minutes.items())
            ],
        )

    async def pause_hosts(self, pauses: Mapping[str, float]) -> None:
        hosts = sorted(pauses)
        await self._db.execute(
            "UPDATE hosts SET paused_until = greatest(paused_until, v.until),"
            " next_ready = greatest(next_ready, v.until)"
            " FROM unnest($1::text[], $2::float8[]) AS v(host, until)"
            " WHERE hosts.host = v.host",
            hosts,
            [pauses[h] for h in hosts],
        )

    async def keep_validators(self, validated: Sequence[Outcome]) -> None:
        """The job's own URL, answered without a redirect."""
        await self._db.execute(
            "INSERT INTO validators (url, etag, last_modified, body_sha256, body_path)"
            " SELECT jobs.url, v.etag, v.modified, v.sha, v.path"
            " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])"
            " AS v(id, etag, modified, sha, path) JOIN jobs ON jobs.id = v.id"
            " JOIN results ON results.job_id = jobs.id AND results.run = jobs.run"
            " AND results.final_url = jobs.url"
            " ON CONFLICT (url) DO UPDATE SET etag = excluded.etag,"
            " last_modified = excluded.last_modified,"
            " body_sha256 = excluded.body_sha256, body_path = excluded.body_path",
            [o.job_id for o in validated],
            [o.etag for o in validated],
            [o.last_modified for o in validated],
            [o.body_sha256 for o in validated],
            [o.body_path for o in validated],
        )

    async def keep_robots(self, verdicts: Sequence[Verdict]) -> None:
        await self._db.executemany(
            "INSERT INTO robots_txt VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (origin)"
            " DO UPDATE SET fetched_at = excluded.fetched_at, status = excluded.status,"
            " crawl_delay = excluded.crawl_delay, size = excluded.size, body = excluded.body",
            [(v.origin, v.fetched_at, v.status, v.crawl_delay, v.size, v.body) for v in verdicts],
        )
