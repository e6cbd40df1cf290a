"""Submitting and cancelling on PostgreSQL, inside the transaction the store opened: the rules
are `fetcher.intake`'s, the SQL is here. Rows go as arrays (`unnest`), host by host (the
triggers lock host rows in order)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from fetcher.errors import IdempotencyKeyReused
from fetcher.intake import COLUMNS, Key, SubmissionPlan, submission_plan
from fetcher.jobqueue import KEY_TTL_S, Once
from fetcher.model import JobRequest, JobState, Submitted
from fetcher.postgres.tables import PostgresTables

__all__ = ["cancel", "submit", "submit_once"]


async def submit(db: asyncpg.Connection, jobs: Sequence[JobRequest], now: float) -> list[Submitted]:
    """Queue `jobs`; for each, its new id, or the id of the same request already queued,
    retrying or running."""
    plan = submission_plan(jobs, now)
    order = plan.by_host()
    new = await _insert(db, plan, order)
    # each statement sees what committed before it: a duplicate's job may have ended since
    # the insert met it; the next insert queues it then
    for _ in range(3):
        existing = await _existing(db, plan.others(new))
        known = new | existing  # once: a union per job made a 100,000-job chunk quadratic
        missing = [i for i in order if plan.keys[i] not in known]
        if not missing:
            break
        new |= await _insert(db, plan, missing)
    if plan.requests:
        await db.executemany("INSERT INTO job_requests VALUES ($1, $2, $3)", plan.request_rows(new))
    return plan.answers(new, existing)


async def submit_once(
    db: asyncpg.Connection, jobs: Sequence[JobRequest], now: float, once: Once
) -> tuple[str, bool]:
    """`submit` under an Idempotency-Key: a second use of the key, from whichever daemon,
    waits for the first to commit (a lock on the key's hash for the transaction), then gets
    its answer; or this submit's answer, kept with the key."""
    await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 2311))", once.key)
    row = await db.fetchrow(
        "SELECT request_sha256, answer FROM idempotency WHERE key = $1 AND created_at > $2",
        once.key,
        now - KEY_TTL_S,
    )
    if row is not None:
        if row[0] != once.request_sha256:
            raise IdempotencyKeyReused(once.key)
        return row[1], True
    answer = once.answer(await submit(db, jobs, now) if jobs else [])
    await db.execute(
        "INSERT INTO idempotency (key, request_sha256, answer, created_at)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET"
        " request_sha256 = excluded.request_sha256, answer = excluded.answer,"
        " created_at = excluded.created_at",
        once.key,
        once.request_sha256,
        answer,
        now,
    )
    return answer, False


async def _insert(
    db: asyncpg.Connection, plan: SubmissionPlan, order: Sequence[int]
) -> dict[Key, int]:
    rows = [row[1:] for row in _full(plan, order)]
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[]] * 17
    added = await db.fetch(
        "INSERT INTO jobs (url, host, method, body_sha256, priority, state, next_attempt_at,"
        " max_attempts, timeout_s, retry, metadata, webhook, every_s, adaptive, min_every_s,"
        " max_every_s, notify_changed, created_at, updated_at)"
        " SELECT u, h, m, b, p, s, n, a, t, r <> 0, d, w, e, ad <> 0, lo, hi, nc <> 0, $18, $18"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],"
        " $7::float8[], $8::int[], $9::float8[], $10::int[], $11::text[], $12::text[],"
        " $13::float8[], $14::int[], $15::float8[], $16::float8[], $17::int[])"
        " AS v(u, h, m, b, p, s, n, a, t, r, d, w, e, ad, lo, hi, nc)"
        " ON CONFLICT (left(url, 1000), md5(url), method, body_sha256)"
        " WHERE state IN ('queued', 'retrying', 'running') DO NOTHING"
        " RETURNING id, url, method, body_sha256",
        *columns,
        plan.now,
    )
    return {(row[1], row[2], row[3]): row[0] for row in added}


def _full(plan: SubmissionPlan, order: Sequence[int]) -> list[tuple[Any, ...]]:
    """Every column of each row (PostgreSQL takes them as arrays, at no cost per column)."""
    names, rows = plan.table(order, 0)
    at = {name: 3 + n for n, name in enumerate(names)}
    return [
        (*row[:3], *(row[at[name]] if name in at else default for name, default in COLUMNS.items()))
        for row in rows
    ]


async def _existing(db: asyncpg.Connection, keys: list[Key]) -> dict[Key, int]:
    """The active jobs with these fingerprints."""
    if not keys:
        return {}
    rows = await db.fetch(
        "SELECT j.id, v.u, v.m, v.b FROM unnest($1::text[], $2::text[], $3::text[])"
        " AS v(u, m, b) JOIN jobs j ON left(j.url, 1000) = left(v.u, 1000)"
        " AND md5(j.url) = md5(v.u) AND j.method = v.m AND j.body_sha256 = v.b"
        " WHERE j.state IN ('queued', 'retrying', 'running')",
        *(list(c) for c in zip(*keys, strict=True)),
    )
    return {(row[1], row[2], row[3]): row[0] for row in rows}


async def cancel(
    db: asyncpg.Connection, ids: Sequence[int], owner: str, now: float, webhook: str | None
) -> dict[int, JobState]:
    """A queued or retrying job ends `cancelled` now (with its result), a running one is
    marked to end after its current request; the state each known job was in before."""
    rows = await db.fetch(
        "SELECT id, state FROM jobs WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        list(ids),
    )
    before = {row[0]: JobState(row[1]) for row in rows}
    cancelled = await db.fetch(
        "UPDATE jobs SET state = 'cancelled', next_attempt_at = NULL, updated_at = $2"
        " WHERE id = ANY($1::bigint[]) AND state IN ('queued', 'retrying') RETURNING id",
        list(ids),
        now,
    )
    await db.execute(
        "UPDATE jobs SET cancel = true WHERE id = ANY($1::bigint[]) AND state = 'running'",
        list(ids),
    )
    await _cancelled(PostgresTables(db, owner, now, webhook), [row[0] for row in cancelled])
    return before


async def _cancelled(tables: PostgresTables, job_ids: list[int]) -> None:
    """Results for jobs cancelled before they ran, their webhooks, their places in the feed."""
    if job_ids:
        await tables.cancelled(job_ids)
        await tables.enqueue_webhooks(job_ids)
        await tables.stamp_feed()
