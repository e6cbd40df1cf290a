"""What goes, on PostgreSQL: old results with their finished jobs and minute rows
(FETCHER_RETENTION_DAYS), Idempotency-Keys past their day, deliveries that ended a week ago.
Cumulative counters are never pruned."""

from __future__ import annotations

import asyncpg

from fetcher.archive import is_legacy
from fetcher.batch import Pruned
from fetcher.jobqueue import KEY_TTL_S
from fetcher.postgres.connection import row_count

__all__ = ["DELIVERIES_KEPT_S", "expire", "prune"]

DELIVERIES_KEPT_S = 7 * 86_400.0  # `fetcher webhooks --failed` looks back a week


async def prune(db: asyncpg.Connection, before: float, limit: int) -> Pruned:
    """Up to `limit` results finished before `before`, their finished jobs, the minute rows
    before it; the bodies of the layout before WARC that no result names any more."""
    rows = await db.fetch(
        "DELETE FROM results WHERE job_id IN (SELECT job_id FROM results"
        " WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)"
        " RETURNING job_id, body_sha256, body_path",
        before,
        limit,
    )
    await db.execute(
        "DELETE FROM jobs WHERE id = ANY($1::bigint[])"
        " AND state IN ('done', 'failed', 'cancelled')",
        [row[0] for row in rows],
    )
    orphans = await db.fetch(
        "SELECT sha FROM unnest($1::text[]) AS sha WHERE NOT EXISTS (SELECT 1 FROM results"
        " WHERE body_sha256 = sha AND strpos(body_path, '#') = 0)",  # results_legacy_body
        sorted({row[1] for row in rows if row[1] and is_legacy(row[2])}),
    )
    status = await db.execute("DELETE FROM host_minutes WHERE minute < $1", int(before // 60))
    return Pruned(len(rows), len(rows) + row_count(status), [row[0] for row in orphans])


async def expire(db: asyncpg.Connection, now: float) -> int:
    keys = await db.execute("DELETE FROM idempotency WHERE created_at < $1", now - KEY_TTL_S)
    ended = await db.execute(
        "DELETE FROM webhooks WHERE state <> 'pending' AND ended_at < $1",
        now - DELIVERIES_KEPT_S,
    )
    return row_count(keys) + row_count(ended)
