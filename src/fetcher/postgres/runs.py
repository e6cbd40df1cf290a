"""Runs on PostgreSQL: retries and recurring runs coming due, and finished jobs driven again
(back at their first hop's host: `home_host`, where a redirect had moved them)."""

from __future__ import annotations

import asyncpg

from fetcher.jobqueue import Redrive
from fetcher.postgres.connection import row_count
from fetcher.recurrence import JITTER, MIN_OVERDUE_S
from fetcher.rows import glob_to_like

__all__ = ["promote_due", "redrive", "waiting_runs"]


async def promote_due(db: asyncpg.Connection, now: float) -> int:
    # missed runs (overdue past greatest(interval, MIN_OVERDUE_S)) spread over their jitter
    await db.execute(
        "UPDATE jobs SET next_attempt_at = $1 + random() * every_s * $2"
        " WHERE every_s IS NOT NULL AND state = 'retrying' AND attempts = 0"
        " AND next_attempt_at < $1 - greatest(every_s, $3)",
        now,
        JITTER,
        MIN_OVERDUE_S,
    )
    status = await db.execute(
        "UPDATE jobs SET state = 'queued', next_attempt_at = NULL, updated_at = $1"
        " WHERE state = 'retrying' AND next_attempt_at <= $1",
        now,
    )
    return row_count(status)


async def waiting_runs(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM jobs WHERE every_s IS NOT NULL AND state = 'retrying'"
        )
    )


_CHOSEN = """
    SELECT max(j.id) AS id FROM jobs j JOIN results r ON r.job_id = j.id AND r.run = j.run
    WHERE j.state = $1 AND ($2::text IS NULL OR j.host LIKE $2 ESCAPE '\\')
    AND ($3::float8 IS NULL OR r.finished_at >= $3)
    AND ($4::text IS NULL OR strpos(r.error, $4) > 0)
    AND NOT EXISTS (SELECT 1 FROM jobs a WHERE left(a.url, 1000) = left(j.url, 1000)
                    AND md5(a.url) = md5(j.url) AND a.method = j.method
                    AND a.body_sha256 = j.body_sha256
                    AND a.state IN ('queued', 'retrying', 'running'))
    GROUP BY j.url, j.method, j.body_sha256
"""


async def redrive(db: asyncpg.Connection, which: Redrive, now: float, dry_run: bool) -> int:
    like = None if which.host is None else glob_to_like(which.host)
    params = (which.state, like, which.since, which.error)
    if dry_run:
        return int(await db.fetchval(f"SELECT count(*) FROM ({_CHOSEN}) AS c", *params))
    status = await db.execute(
        "UPDATE jobs SET state = 'queued', attempts = 0, run = run + 1, next_attempt_at = NULL,"
        " cancel = false, updated_at = $5, host = coalesce(home_host, host), home_host = NULL,"
        f" resume_url = NULL, resume_method = NULL, hops = 0 WHERE id IN ({_CHOSEN})",
        *params,
        now,
    )
    return row_count(status)
