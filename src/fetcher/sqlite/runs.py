"""Runs on SQLite: retries and recurring runs coming due, and finished jobs driven again."""

from __future__ import annotations

import aiosqlite

from fetcher.jobqueue import Redrive
from fetcher.recurrence import JITTER, MIN_OVERDUE_S
from fetcher.rows import glob_to_like

__all__ = ["promote_due", "redrive", "waiting_runs"]


async def promote_due(db: aiosqlite.Connection, now: float) -> int:
    # missed runs (overdue past max(interval, MIN_OVERDUE_S)) spread over their jitter window
    await db.execute(
        "UPDATE jobs SET next_attempt_at = ? + (abs(random()) % 1000000) / 1e6 * every_s * ?"
        " WHERE every_s IS NOT NULL AND state = 'retrying' AND attempts = 0"
        " AND next_attempt_at < ? - max(every_s, ?)",
        (now, JITTER, now, MIN_OVERDUE_S),
    )
    cursor = await db.execute(
        "UPDATE jobs SET state = 'queued', next_attempt_at = NULL, updated_at = ?"
        " WHERE state = 'retrying' AND next_attempt_at <= ?",
        (now, now),
    )
    return cursor.rowcount


async def waiting_runs(db: aiosqlite.Connection) -> int:
    cursor = await db.execute(
        "SELECT count(*) FROM jobs WHERE every_s IS NOT NULL AND state = 'retrying'"
    )
    return int((await cursor.fetchone() or (0,))[0])


_CHOSEN = """
    SELECT max(j.id) AS id FROM jobs j JOIN results r ON r.job_id = j.id AND r.run = j.run
    WHERE j.state = ? AND (? IS NULL OR j.host LIKE ? ESCAPE '\\')
    AND (? IS NULL OR r.finished_at >= ?) AND (? IS NULL OR instr(r.error, ?) > 0)
    AND NOT EXISTS (SELECT 1 FROM jobs a WHERE a.url = j.url AND a.method = j.method
                    AND a.body_sha256 = j.body_sha256
                    AND a.state IN ('queued', 'retrying', 'running'))
    GROUP BY j.url, j.method, j.body_sha256
"""


async def redrive(db: aiosqlite.Connection, which: Redrive, now: float, dry_run: bool) -> int:
    like = None if which.host is None else glob_to_like(which.host)
    params = (which.state, like, like, which.since, which.since, which.error, which.error)
    if dry_run:
        cursor = await db.execute(f"SELECT count(*) FROM ({_CHOSEN})", params)
        return int((await cursor.fetchone() or (0,))[0])
    cursor = await db.execute(
        "UPDATE jobs SET state = 'queued', attempts = 0, run = run + 1, next_attempt_at = NULL,"
        f" cancel = 0, updated_at = ? WHERE id IN ({_CHOSEN})",
        (now, *params),
    )
    return cursor.rowcount
