"""The webhook outbox on PostgreSQL: deliveries claimed under a lease by whichever daemon
(`SKIP LOCKED`: two daemons never take the same one), and what became of each. The events
themselves are written with their results (`PostgresTables.enqueue_webhooks`)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from fetcher.jobqueue import Delivery, ResultRow, Settled
from fetcher.postgres.reader import RESULT_COLUMNS
from fetcher.rows import result_row

__all__ = ["GONE", "claim", "settle"]

GONE = "the receiver answered 410 Gone: no more deliveries to this URL"


async def claim(
    db: asyncpg.Connection, owner: str, now: float, limit: int, lease_s: float
) -> list[Delivery]:
    claimed = await db.fetch(
        "UPDATE webhooks SET lease_owner = $1, lease_until = $2 WHERE id IN"
        " (SELECT id FROM webhooks WHERE state = 'pending' AND next_attempt_at <= $3"
        " AND coalesce(lease_until, 0) < $3 ORDER BY next_attempt_at LIMIT $4"
        " FOR UPDATE SKIP LOCKED)"
        " RETURNING id, event_id, job_id, run, url, attempts, created_at",
        owner,
        now + lease_s,
        now,
        limit,
    )
    if not claimed:
        return []
    gone = {
        row[0]
        for row in await db.fetch(
            "SELECT url FROM webhook_gone WHERE url = ANY($1::text[])",
            list({row["url"] for row in claimed}),
        )
    }
    if gone:
        await _fail_gone(db, gone, now)
        claimed = [row for row in claimed if row["url"] not in gone]
    results = await _results(db, [(row["job_id"], row["run"]) for row in claimed])
    return [
        Delivery(
            row["id"],
            row["event_id"],
            row["url"],
            row["attempts"],
            row["created_at"],
            results.get((row["job_id"], row["run"])),
        )
        for row in claimed
    ]


async def _results(
    db: asyncpg.Connection, runs: list[tuple[int, int]]
) -> dict[tuple[int, int], ResultRow]:
    rows = await db.fetch(
        f"SELECT {RESULT_COLUMNS} FROM unnest($1::bigint[], $2::int[]) AS v(job_id, run)"
        " JOIN results r ON r.job_id = v.job_id AND r.run = v.run"
        " LEFT JOIN jobs j ON j.id = r.job_id",
        [job_id for job_id, _ in runs],
        [run for _, run in runs],
    )
    return {(row["job_id"], row["run"]): result_row(dict(row)) for row in rows}


async def settle(db: asyncpg.Connection, now: float, done: Sequence[Settled]) -> None:
    await db.executemany(
        "UPDATE webhooks SET state = $1, attempts = attempts + 1, last_status = $2,"
        " last_error = $3, next_attempt_at = coalesce($4, next_attempt_at),"
        " ended_at = CASE WHEN $1 = 'pending' THEN NULL ELSE $5::float8 END,"
        " lease_owner = NULL, lease_until = NULL WHERE id = $6 AND state = 'pending'",
        [(s.state, s.status, s.error, s.next_attempt_at, now, s.id) for s in done],
    )
    gone = {s.url for s in done if s.gone}
    if gone:
        await db.execute(
            "INSERT INTO webhook_gone (url, at) SELECT u, $2 FROM unnest($1::text[]) AS u"
            " ON CONFLICT (url) DO NOTHING",
            sorted(gone),
            now,
        )
        await _fail_gone(db, gone, now)


async def _fail_gone(db: asyncpg.Connection, urls: set[str], now: float) -> None:
    await db.execute(
        "UPDATE webhooks SET state = 'failed', last_error = $1, ended_at = $2,"
        " lease_owner = NULL, lease_until = NULL"
        " WHERE state = 'pending' AND url = ANY($3::text[])",
        GONE,
        now,
        sorted(urls),
    )
