"""Submitting and cancelling on SQLite, inside the transaction the store opened: the rules
are `fetcher.intake`'s, the SQL is here.

A submit's ids are its own to give: one after the largest, host by host (the transaction holds
the write lock), so only a batch that met a duplicate asks which of its rows went in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import aiosqlite

from fetcher.errors import IdempotencyKeyReused
from fetcher.intake import Key, SubmissionPlan, submission_plan
from fetcher.jobqueue import KEY_TTL_S, Once
from fetcher.model import JobRequest, JobState, Submitted
from fetcher.sqlite.tables import SqliteTables, field, fields, json_array

__all__ = ["cancel", "submit", "submit_once"]


async def submit(
    db: aiosqlite.Connection, jobs: Sequence[JobRequest], now: float
) -> list[Submitted]:
    """Queue `jobs`; for each, its new id, or the id of the same request already queued,
    retrying or running (a duplicate is not queued again)."""
    plan = submission_plan(jobs, now)
    order = plan.by_host()
    cursor = await db.execute("SELECT coalesce(max(id), 0) FROM jobs")
    first = (await cursor.fetchone() or (0,))[0] + 1
    if await _insert(db, plan, order, first) == len(jobs):
        if plan.requests:
            await _keep_requests(db, plan, {plan.keys[i]: n for n, i in enumerate(order, first)})
        return plan.numbered(order, first)
    cursor = await db.execute("SELECT id FROM jobs WHERE id >= ?", (first,))
    went_in = {row[0] for row in await cursor.fetchall()}
    new = {plan.keys[i]: n for n, i in enumerate(order, first) if n in went_in}
    if plan.requests:
        await _keep_requests(db, plan, new)
    return plan.answers(new, await _existing(db, plan.others(new)))


async def submit_once(
    db: aiosqlite.Connection, jobs: Sequence[JobRequest], now: float, once: Once
) -> tuple[str, bool]:
    """`submit` under an Idempotency-Key (the write lock makes a second use of the key wait
    for the first): the key's answer again, or this submit's, kept with the key."""
    cursor = await db.execute(
        "SELECT request_sha256, answer FROM idempotency WHERE key = ? AND created_at > ?",
        (once.key, now - KEY_TTL_S),
    )
    row = await cursor.fetchone()
    if row is not None:
        if row[0] != once.request_sha256:
            raise IdempotencyKeyReused(once.key)
        return row[1], True
    answer = once.answer(await submit(db, jobs, now) if jobs else [])
    await db.execute(
        "INSERT OR REPLACE INTO idempotency (key, request_sha256, answer, created_at)"
        " VALUES (?, ?, ?, ?)",
        (once.key, once.request_sha256, answer, now),
    )
    return answer, False


async def _insert(
    db: aiosqlite.Connection, plan: SubmissionPlan, order: list[int], first: int
) -> int:
    """Insert the jobs of `plan` in `order`, numbered from `first`, a duplicate of an active
    job left out; how many went in. The job counts move on with them."""
    names, rows = plan.table(order, first)
    # One statement, its rows a JSON array: SQLite inserts them all without the GIL, while
    # `fetcher submit` parses the next chunk. With executemany the GIL came back to this
    # thread row by row and the two took turns (bench/insert_cost.py). Each column is a
    # json_extract of its row (SQLite 3.40 parses the row again for each): only the columns
    # some job of the chunk sets are given.
    cursor = await db.execute(
        f"INSERT INTO jobs (id, url, host, {''.join(n + ', ' for n in names)}created_at,"
        f" updated_at) SELECT {fields(0, len(names) + 2)}, ?, ? FROM json_each(?) AS v"
        " WHERE true ON CONFLICT DO NOTHING"  # WHERE: how SQLite tells an upsert apart
        + (" RETURNING state" if "state" in names else ""),
        (plan.now, plan.now, json_array(rows)),
    )
    if "state" in names:
        states = Counter(row[0] for row in await cursor.fetchall())
    else:
        states = Counter({"queued": cursor.rowcount})
    for state, n in states.items():
        await db.execute("UPDATE job_counts SET n = n + ? WHERE state = ?", (n, state))
    return sum(states.values())


async def _keep_requests(
    db: aiosqlite.Connection, plan: SubmissionPlan, new: dict[Key, int]
) -> None:
    await db.executemany("INSERT INTO job_requests VALUES (?, ?, ?)", plan.request_rows(new))


async def _existing(db: aiosqlite.Connection, keys: list[Key]) -> dict[Key, int]:
    """The active jobs with these fingerprints."""
    cursor = await db.execute(
        f"SELECT jobs.id, v.key FROM json_each(?) AS v JOIN jobs ON jobs.url = {field(0)}"
        f" AND jobs.method = {field(1)} AND jobs.body_sha256 = {field(2)}"
        " AND jobs.state IN ('queued', 'retrying', 'running')",
        (json_array(keys),),
    )
    return {keys[key]: job_id for job_id, key in await cursor.fetchall()}


async def cancel(
    db: aiosqlite.Connection, ids: Sequence[int], owner: str, now: float, webhook: str | None
) -> dict[int, JobState]:
    """A queued or retrying job ends `cancelled` now (with its result), a running one is
    marked to end after its current request; the state each known job was in before."""
    chosen = json_array(ids)
    cursor = await db.execute(
        "SELECT id, state FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (chosen,)
    )
    before = {job_id: JobState(state) for job_id, state in await cursor.fetchall()}
    cursor = await db.execute(
        "UPDATE jobs SET state = 'cancelled', next_attempt_at = NULL, updated_at = ?"
        " WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('queued', 'retrying')"
        " RETURNING id",
        (now, chosen),
    )
    done = [r[0] for r in await cursor.fetchall()]
    await db.execute(
        "UPDATE jobs SET cancel = 1 WHERE id IN (SELECT value FROM json_each(?))"
        " AND state = 'running'",
        (chosen,),
    )
    await _cancelled(SqliteTables(db, owner, now, webhook), done)
    return before


async def _cancelled(tables: SqliteTables, job_ids: list[int]) -> None:
    """Results for jobs cancelled before they ran, their webhooks, their places in the feed."""
    if job_ids:
        await tables.cancelled(job_ids)
        await tables.enqueue_webhooks(job_ids)
        await tables.stamp_feed()
