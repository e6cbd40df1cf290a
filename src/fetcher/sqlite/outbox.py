"""The webhook outbox on SQLite: deliveries claimed under a lease (any daemon may send them),
and what became of each. The events themselves are written with their results
(`SqliteTables.enqueue_webhooks`)."""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from fetcher.jobqueue import Delivery, ResultRow, Settled
from fetcher.rows import result_row
from fetcher.sqlite.reader import RESULT_COLUMNS
from fetcher.sqlite.tables import field, json_array

__all__ = ["GONE", "claim", "settle"]

GONE = "the receiver answered 410 Gone: no more deliveries to this URL"


async def claim(
    db: aiosqlite.Connection, owner: str, now: float, limit: int, lease_s: float
) -> list[Delivery]:
    cursor = await db.execute(
        "UPDATE webhooks SET lease_owner = ?, lease_until = ? WHERE id IN"
        " (SELECT id FROM webhooks WHERE state = 'pending' AND next_attempt_at <= ?"
        " AND coalesce(lease_until, 0) < ? ORDER BY next_attempt_at LIMIT ?)"
        " RETURNING id, event_id, job_id, run, url, attempts, created_at",
        (owner, now + lease_s, now, now, limit),
    )
    claimed = list(await cursor.fetchall())
    if not claimed:
        return []
    cursor = await db.execute(
        "SELECT url FROM webhook_gone WHERE url IN (SELECT value FROM json_each(?))",
        (json_array({row[4] for row in claimed}),),
    )
    gone = {row[0] for row in await cursor.fetchall()}
    if gone:
        await _fail_gone(db, gone, now)
        claimed = [row for row in claimed if row[4] not in gone]
    results = await _results(db, [(row[2], row[3]) for row in claimed])
    return [
        Delivery(id, event_id, url, attempts, created_at, results.get((job_id, run)))
        for id, event_id, job_id, run, url, attempts, created_at in claimed
    ]


async def _results(
    db: aiosqlite.Connection, runs: list[tuple[int, int]]
) -> dict[tuple[int, int], ResultRow]:
    cursor = await db.execute(
        f"SELECT {RESULT_COLUMNS} FROM json_each(?) AS v"
        f" JOIN results r ON r.job_id = {field(0)} AND r.run = {field(1)}"
        " LEFT JOIN jobs j ON j.id = r.job_id",
        (json_array(runs),),
    )
    names = [column[0] for column in cursor.description]
    rows = [result_row(dict(zip(names, row, strict=True))) for row in await cursor.fetchall()]
    return {(row["job_id"], row["run"]): row for row in rows}


async def settle(db: aiosqlite.Connection, now: float, done: Sequence[Settled]) -> None:
    await db.executemany(
        "UPDATE webhooks SET state = ?, attempts = attempts + 1, last_status = ?,"
        " last_error = ?, next_attempt_at = coalesce(?, next_attempt_at),"
        " ended_at = CASE WHEN ? = 'pending' THEN NULL ELSE ? END,"
        " lease_owner = NULL, lease_until = NULL WHERE id = ? AND state = 'pending'",
        [(s.state, s.status, s.error, s.next_attempt_at, s.state, now, s.id) for s in done],
    )
    gone = {s.url for s in done if s.gone}
    if gone:
        await db.executemany(
            "INSERT OR IGNORE INTO webhook_gone (url, at) VALUES (?, ?)",
            [(url, now) for url in sorted(gone)],
        )
        await _fail_gone(db, gone, now)


async def _fail_gone(db: aiosqlite.Connection, urls: set[str], now: float) -> None:
    await db.execute(
        "UPDATE webhooks SET state = 'failed', last_error = ?, ended_at = ?,"
        " lease_owner = NULL, lease_until = NULL"
        " WHERE state = 'pending' AND url IN (SELECT value FROM json_each(?))",
        (GONE, now, json_array(sorted(urls))),
    )
