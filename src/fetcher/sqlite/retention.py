"""What goes, on SQLite: old results with their finished jobs and minute rows
(FETCHER_RETENTION_DAYS), Idempotency-Keys past their day, deliveries that ended a week ago.
Cumulative counters are never pruned."""

from __future__ import annotations

import aiosqlite

from fetcher.archive import is_legacy
from fetcher.batch import Pruned
from fetcher.jobqueue import KEY_TTL_S
from fetcher.sqlite.tables import json_array

__all__ = ["DELIVERIES_KEPT_S", "expire", "prune"]

DELIVERIES_KEPT_S = 7 * 86_400.0  # `fetcher webhooks --failed` looks back a week


async def prune(db: aiosqlite.Connection, before: float, limit: int) -> Pruned:
    """Up to `limit` results finished before `before`, their finished jobs, the minute rows
    before it; the bodies of the layout before WARC that no result names any more (a WARC
    file goes whole, by its age: `archive.remove_expired`)."""
    cursor = await db.execute(
        "DELETE FROM results WHERE job_id IN (SELECT job_id FROM results"
        " WHERE finished_at < ? LIMIT ?) RETURNING job_id, body_sha256, body_path",
        (before, limit),
    )
    rows = list(await cursor.fetchall())
    await db.execute(
        "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
        " AND state IN ('done', 'failed', 'cancelled')",
        (json_array(row[0] for row in rows),),
    )
    cursor = await db.execute(
        "SELECT value FROM json_each(?) WHERE NOT EXISTS (SELECT 1 FROM results"
        " WHERE body_sha256 = value AND instr(body_path, '#') = 0)",  # results_legacy_body
        (json_array(sorted({sha for _, sha, path in rows if sha and is_legacy(path)})),),
    )
    orphans = [row[0] for row in await cursor.fetchall()]
    cursor = await db.execute("DELETE FROM host_minutes WHERE minute < ?", (int(before // 60),))
    return Pruned(len(rows), len(rows) + max(cursor.rowcount, 0), orphans)


async def expire(db: aiosqlite.Connection, now: float) -> int:
    keys = await db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - KEY_TTL_S,))
    ended = await db.execute(
        "DELETE FROM webhooks WHERE state <> 'pending' AND ended_at < ?",
        (now - DELIVERIES_KEPT_S,),
    )
    return max(keys.rowcount, 0) + max(ended.rowcount, 0)
