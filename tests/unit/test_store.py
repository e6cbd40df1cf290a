"""The store: the seed's lost-update race, for real against SQLite, and the queue's claims."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from fetcher.batch import Batch
from fetcher.model import Exchange, HostLease, HostRate, JobState, Outcome
from fetcher.sqlite import schema
from fetcher.sqlite.store import SqliteQueue as Store
from tests.jobs import job_for

TASKS = 200


async def test_unlocked_read_modify_write_loses_updates(tmp_path: Path) -> None:
    """Without the lock, tasks that read a host's row, await, and write it back lose updates:
    the race the store's lock exists for (this unlocked variant lives only here)."""
    store = await Store.open(tmp_path / "f.db")
    db = store._db
    await db.execute(
        "INSERT INTO host_counters VALUES ('h', 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, 0)"
    )

    async def unlocked_increment() -> None:
        cursor = await db.execute("SELECT requests FROM host_counters WHERE host = 'h'")
        (current,) = await cursor.fetchone()  # type: ignore[misc]
        await asyncio.sleep(0)  # any await: another task reads the same value meanwhile
        await db.execute("UPDATE host_counters SET requests = ? WHERE host = 'h'", (current + 1,))

    await asyncio.gather(*(unlocked_increment() for _ in range(TASKS)))
    cursor = await db.execute("SELECT requests FROM host_counters WHERE host = 'h'")
    (final,) = await cursor.fetchone()  # type: ignore[misc]
    await store.close()
    assert final < TASKS


async def test_locked_record_loses_no_update(tmp_path: Path) -> None:
    """`Store.record` does the same read-modify-write under its lock: every request counts,
    and the row adds up, however many batches commit at once."""
    store = await Store.open(tmp_path / "f.db")
    await store.submit([job_for(f"http://h.example/{i}") for i in range(TASKS)])
    jobs = await store.claim([("h.example", TASKS)], lease_s=60)
    assert len(jobs) == TASKS

    async def record(i: int) -> None:
        status = (200, 301, 404, 500, None)[i % 5]
        exchange = Exchange("h.example", status, 10, 5.0 + i, 1_700_000_000.0 + i)
        state = JobState.DONE if status else JobState.FAILED
        await store.record(Batch([Outcome(jobs[i].id, state, 1, status=status)], [exchange]))

    await asyncio.gather(*(record(i) for i in range(TASKS)))
    cursor = await store._db.execute("SELECT * FROM host_stats")
    row = dict(zip([d[0] for d in cursor.description], await cursor.fetchone(), strict=True))  # type: ignore[arg-type]
    counts = await store.counts()
    await store.close()
    assert row["requests"] == TASKS
    assert (
        row["status_2xx"]
        + row["status_3xx"]
        + row["status_4xx"]
        + row["status_5xx"]
        + row["errors"]
        == TASKS
    )
    assert row["errors"] == TASKS // 5 and row["bytes"] == 10 * TASKS
    assert row["latency_max_ms"] == 5.0 + TASKS - 2  # the largest with a response (i=198)
    assert counts["done"] + counts["failed"] == TASKS and counts["running"] == 0


async def test_submit_does_not_queue_an_active_url_twice(tmp_path: Path) -> None:
    """A URL already queued, retrying or running is not queued again; a finished one may be.
    The database file is readable by its owner only."""
    store = await Store.open(tmp_path / "f.db")
    assert (tmp_path / "f.db").stat().st_mode & 0o077 == 0
    url = job_for("http://h.example/a")
    first, again = await store.submit([url, url])
    assert (first.duplicate, again) == (False, (first.id, True))
    assert await store.submit([url]) == [(first.id, True)]  # the answer names the job
    [claimed] = await store.claim([("h.example", 5)], lease_s=60)
    assert await store.submit([url]) == [(first.id, True)]
    await store.record(Batch([Outcome(claimed.id, JobState.DONE, 1, status=200)]))
    [later] = await store.submit([url])
    assert not later.duplicate and later.id != first.id
    await store.close()


async def test_claims_walk_hosts_and_leases_expire(tmp_path: Path) -> None:
    """Hosts are found by an index walk; a lease that runs out puts the job back in the queue."""
    store = await Store.open(tmp_path / "f.db")
    await store.submit([job_for(f"http://h{i % 3}.example/{i}") for i in range(9)])
    assert await store.hosts_with_queued("", 10) == (
        ["h0.example", "h1.example", "h2.example"],
        None,
    )
    assert await store.hosts_with_queued("h0.example", 1) == (["h1.example"], "h1.example")
    assert await store.hosts_with_queued("h1.example", 1) == (["h2.example"], None)
    jobs = await store.claim([("h1.example", 2)], lease_s=60)
    assert [j.host for j in jobs] == ["h1.example", "h1.example"]
    await store._db.execute("UPDATE jobs SET lease_until = 0 WHERE state = 'running'")
    other = await Store.open(tmp_path / "f.db")
    assert await other.heartbeat(lease_s=60) == 2
    assert (await other.counts())["queued"] == 9
    await other.close()
    await store.close()


async def test_prune_removes_old_results_and_minutes_but_never_counters(tmp_path: Path) -> None:
    """Retention deletes old results, finished jobs and minute rows, names the bodies of the
    layout before WARC that no result uses any more (a WARC record of the same payload does
    not name the old file), and leaves the cumulative counters alone."""
    store = await Store.open(tmp_path / "f.db")
    await store.submit([job_for(f"http://h.example/{i}") for i in range(4)])
    jobs = await store.claim([("h.example", 4)], lease_s=60)
    old = Exchange("h.example", 200, 1, 1.0, 100.0)
    paths = ["sh/sha0", "fetcher-x.warc#120", "sh/sha1", "sh/sha1"]  # 1 and 3 pruned below
    outcomes = [
        Outcome(j.id, JobState.DONE, 1, status=200, body_sha256=f"sha{i // 2}", body_path=paths[i])
        for i, j in enumerate(jobs)
    ]
    await store.record(Batch(outcomes, [old] * len(jobs)))
    await store._db.execute("UPDATE results SET finished_at = 0 WHERE job_id IN (1, 3)")
    pruned = await store.prune(before=500.0, limit=1)  # one result a transaction
    assert (pruned.results, pruned.rows) == (1, 1 + 1)  # and the minute row (at t=100 s)
    again = await store.prune(before=500.0, limit=1)
    assert (again.results, again.rows) == (1, 1)
    assert sorted(pruned.orphans + again.orphans) == ["sha0"]  # sha1: still named by 4
    assert (await store.prune(before=500.0, limit=1)).results == 0
    cursor = await store._db.execute("SELECT requests FROM host_stats")
    assert await cursor.fetchone() == (4,)
    assert (await store.counts())["done"] == 2
    await store.close()


async def test_record_writes_each_outcome_to_its_own_job_and_result(tmp_path: Path) -> None:
    """A batch goes in as one statement per table: every field lands on its own job and
    result, retries get no result, and a job whose lease another daemon took is left alone."""
    store = await Store.open(tmp_path / "f.db")
    await store.submit([job_for(f"http://h.example/{i}") for i in range(4)])
    a, b, c, d = await store.claim([("h.example", 4)], lease_s=60)
    await store._db.execute("UPDATE jobs SET lease_owner = 'other' WHERE id = ?", (d.id,))
    await store.record(Batch(
        [
            Outcome(a.id, JobState.DONE, 1, status=200, bytes=7, latency_ms=1.5,
                    final_url="http://h.example/a2", body_sha256="s", body_path="p"),
            Outcome(b.id, JobState.FAILED, 3, error="it's \"broken\" — ünïcode"),
            Outcome(c.id, JobState.RETRYING, 2, status=503, next_attempt_at=1234.5),
            Outcome(d.id, JobState.DONE, 1, status=200),
        ]
    ))  # fmt: skip
    cursor = await store._db.execute(
        "SELECT id, state, attempts, next_attempt_at, lease_owner FROM jobs ORDER BY id"
    )
    assert list(await cursor.fetchall()) == [
        (a.id, "done", 1, None, None),
        (b.id, "failed", 3, None, None),
        (c.id, "retrying", 2, 1234.5, None),
        (d.id, "running", 0, None, "other"),
    ]
    cursor = await store._db.execute(
        "SELECT job_id, url, final_url, state, status, bytes, error, attempts, latency_ms,"
        " body_sha256, body_path FROM results ORDER BY job_id"
    )
    assert list(await cursor.fetchall()) == [
        (a.id, a.url, "http://h.example/a2", "done", 200, 7, None, 1, 1.5, "s", "p"),
        (b.id, b.url, None, "failed", None, 0, "it's \"broken\" — ünïcode", 3, None, None, None),
    ]  # fmt: skip
    assert (await store.counts()) == {
        "queued": 0, "retrying": 1, "running": 1, "done": 1, "failed": 1, "cancelled": 0
    }  # fmt: skip
    await store.close()


async def test_a_version_1_database_is_migrated_and_claims_use_the_queued_index(
    tmp_path: Path,
) -> None:
    """Schema migrations run in order on an existing database, its jobs intact; the claim
    walks the index of queued jobs only."""
    path = tmp_path / "f.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        for statement in schema._split(schema._MIGRATIONS[0]):
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO jobs (url, host, state, created_at, updated_at)"
            " VALUES ('http://h.example/', 'h.example', 'queued', 0, 0)"
        )
        db.execute("UPDATE job_counts SET n = 1 WHERE state = 'queued'")
    db.close()
    store = await Store.open(path)
    cursor = await store._db.execute("PRAGMA user_version")
    assert await cursor.fetchone() == (schema.SCHEMA_VERSION,)
    cursor = await store._db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 'queued' AND host = ?"
        " ORDER BY priority DESC, id LIMIT 5",
        ("h.example",),
    )
    assert "jobs_queued" in str(await cursor.fetchall())
    [job] = await store.claim([("h.example", 5)], lease_s=60)
    assert job.url == "http://h.example/"
    assert (await store.counts())["running"] == 1
    await store.close()


async def test_host_pauses_are_kept_with_their_batch_and_end_when_over(tmp_path: Path) -> None:
    """A pause is written in the outcome batch that brought it; the longer of two pauses for
    a host wins; a pause that is over is gone the next time the pauses are read."""
    store = await Store.open(tmp_path / "f.db")
    await store.submit([job_for("http://a.example/1")])
    [job] = await store.claim([("a.example", 1)], lease_s=60)
    now = time.time()
    outcome = Outcome(job.id, JobState.RETRYING, 1, status=503, next_attempt_at=now + 60)
    await store.record(Batch([outcome], pauses={"a.example": now + 30, "b.example": now - 1}))
    await store.record(Batch(pauses={"a.example": now + 10}))
    # the next start takes the pauses up with its first turn of hosts, once
    assert await store.turn_hosts({}, want=10) == [
        HostLease("a.example", HostRate(paused_until=now + 30))
    ]
    assert await store.turn_hosts({}, want=10) == []
    cursor = await store._db.execute("SELECT host FROM host_pauses")
    assert [row[0] for row in await cursor.fetchall()] == ["a.example"]  # b's was over: deleted
    await store.close()
