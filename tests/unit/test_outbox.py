"""The service's side of both real backends: Idempotency-Keys, the webhook outbox (written with
its result, claimed under a lease, settled, a 410 remembered), the feed's commit order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from fetcher.backends import open_queue, open_reader
from fetcher.batch import Batch
from fetcher.errors import IdempotencyKeyReused
from fetcher.jobqueue import JobQueue, Once, QueueReader, Settled
from fetcher.model import JobRequest, JobState, Outcome, Submitted
from fetcher.postgres.tables import PostgresTables
from tests.jobs import job_for

HOOK = "http://hooks.example/in"
_T = TypeVar("_T")


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "f.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def queue(location: Path | str) -> AsyncIterator[JobQueue]:
    store = await open_queue(location, lease_s=30)
    await store.register()
    store.location = location  # type: ignore[attr-defined]
    yield store
    await store.close()


def hooked(url: str) -> JobRequest:
    return job_for(url)._replace(webhook=HOOK)


async def finish(queue: JobQueue, host: str, n: int, state: JobState = JobState.DONE) -> list[int]:
    """Claim n jobs of `host` and commit them final, in one batch."""
    await queue.turn_hosts({}, 100)  # PostgreSQL: a host is claimed under its lease
    jobs = await queue.claim([(host, n)], lease_s=30)
    outcomes = [Outcome(job.id, state, 1, status=200, content_type="text/plain") for job in jobs]
    await queue.record(Batch(outcomes))
    return [job.id for job in jobs]


def answer_of(submitted: list[Submitted]) -> str:
    return ",".join(str(s.id) for s in submitted)


async def test_an_idempotency_key_answers_the_same_and_queues_nothing_twice(
    queue: JobQueue,
) -> None:
    jobs = [job_for(f"http://h.example/{i}") for i in range(3)]
    first, replayed = await queue.submit_once(jobs, Once("k1", "sha-a", answer_of))
    assert (first, replayed) == ("1,2,3", False)
    again, replayed = await queue.submit_once(jobs, Once("k1", "sha-a", answer_of))
    assert (again, replayed) == ("1,2,3", True)
    with pytest.raises(IdempotencyKeyReused):
        await queue.submit_once(jobs[:1], Once("k1", "sha-b", answer_of))
    assert (await queue.counts())["queued"] == 3


async def test_one_key_sent_twice_at_once_queues_once(queue: JobQueue) -> None:
    """Two submits with one key at the same moment (two API requests; on PostgreSQL they may
    reach two daemons): one queues, the other gets its answer."""
    other = await open_queue(queue.location, lease_s=30)  # type: ignore[attr-defined]
    try:
        jobs = [job_for(f"http://h.example/{i}") for i in range(500)]
        answers = await asyncio.gather(
            queue.submit_once(jobs, Once("same", "sha", answer_of)),
            other.submit_once(jobs, Once("same", "sha", answer_of)),
        )
    finally:
        await other.close()
    assert answers[0][0] == answers[1][0]
    assert sorted(replayed for _, replayed in answers) == [False, True]
    assert (await queue.counts())["queued"] == 500


async def test_an_event_is_written_with_its_result_and_claimed_once(queue: JobQueue) -> None:
    await queue.submit([hooked("http://h.example/1"), job_for("http://h.example/2")])
    await finish(queue, "h.example", 2)
    claimed = await queue.claim_webhooks(10, lease_s=60)
    assert [d.event_id for d in claimed] == ["msg_job1_run1"]  # job 2 names no webhook
    (delivery,) = claimed
    assert delivery.url == HOOK and delivery.attempts == 0
    assert delivery.result is not None
    assert (delivery.result["id"], delivery.result["state"]) == (1, "done")
    assert delivery.result["cursor"] >= 1
    assert await queue.claim_webhooks(10, lease_s=60) == []  # leased: not again


async def test_a_delivery_settled_pending_comes_back_when_due(queue: JobQueue) -> None:
    await queue.submit([hooked("http://h.example/1")])
    await finish(queue, "h.example", 1)
    (delivery,) = await queue.claim_webhooks(10, lease_s=60)
    due = time.time() + 0.3
    await queue.settle_webhooks(
        [Settled(delivery.id, delivery.url, "pending", 500, "500", next_attempt_at=due)]
    )
    assert await queue.claim_webhooks(10, lease_s=60) == []
    await asyncio.sleep(0.4)
    (again,) = await queue.claim_webhooks(10, lease_s=60)
    assert (again.event_id, again.attempts) == (delivery.event_id, 1)
    await queue.settle_webhooks([Settled(again.id, again.url, "delivered", 204, None)])
    rows = await read(queue, lambda r: r.webhooks(["delivered"], 10))
    assert [(r["event_id"], r["attempts"], r["last_status"]) for r in rows] == [
        ("msg_job1_run1", 2, 204)
    ]


async def test_a_410_ends_every_delivery_to_its_url(queue: JobQueue) -> None:
    await queue.submit([hooked(f"http://h.example/{i}") for i in range(3)])
    await finish(queue, "h.example", 3)
    first, *_ = await queue.claim_webhooks(1, lease_s=60)
    await queue.settle_webhooks(
        [Settled(first.id, first.url, "failed", 410, "410 Gone", gone=True)]
    )
    assert await queue.claim_webhooks(10, lease_s=60) == []
    await queue.submit([hooked("http://h.example/later")])  # a new event to the same URL
    await finish(queue, "h.example", 1)
    assert await queue.claim_webhooks(10, lease_s=60) == []  # failed at its claim, unsent
    assert len(await read(queue, lambda r: r.webhooks(["failed"], 10))) == 4
    assert await read(queue, lambda r: r.webhooks(["pending"], 10)) == []


async def test_the_default_webhook_tells_of_every_job_that_names_none(
    tmp_path: Path,
) -> None:
    store = await open_queue(tmp_path / "f.db", webhook_url="http://default.example/hook")
    try:
        await store.register()
        await store.submit([job_for("http://h.example/1"), hooked("http://h.example/2")])
        await finish(store, "h.example", 2)
        urls = sorted(d.url for d in await store.claim_webhooks(10, lease_s=60))
    finally:
        await store.close()
    assert urls == ["http://default.example/hook", HOOK]


async def test_a_cancelled_job_has_its_result_its_event_and_its_place(queue: JobQueue) -> None:
    await queue.submit([hooked("http://h.example/1")])
    assert await queue.cancel([1]) == {1: JobState.QUEUED}
    feed = await read(queue, lambda r: r.feed(0, 10))
    assert [(r["id"], r["state"], r["cursor"]) for r in feed] == [(1, "cancelled", 1)]
    assert [d.event_id for d in await queue.claim_webhooks(10, lease_s=60)] == ["msg_job1_run1"]


async def test_the_feed_is_in_commit_order_and_filters(queue: JobQueue) -> None:
    await queue.submit([job_for(f"http://a.example/{i}") for i in range(3)])
    await queue.submit([job_for(f"http://b.example/{i}") for i in range(2)])
    b = await finish(queue, "b.example", 2, JobState.FAILED)
    a = await finish(queue, "a.example", 3)
    feed = await read(queue, lambda r: r.feed(0, 100))
    assert [r["id"] for r in feed] == b + a  # b's batch committed first
    assert [r["cursor"] for r in feed] == [1, 2, 3, 4, 5]
    assert [r["id"] for r in await read(queue, lambda r: r.feed(2, 2))] == a[:2]
    assert [r["id"] for r in await read(queue, lambda r: r.feed(0, 100, state="failed"))] == b
    assert [r["id"] for r in await read(queue, lambda r: r.feed(0, 100, host="a.*"))] == a
    assert await read(queue, lambda r: r.feed(0, 100, host="a_example")) == []  # `_`: no wildcard


async def test_expire_forgets_old_keys_and_ended_deliveries(queue: JobQueue) -> None:
    await queue.submit_once([job_for("http://h.example/1")], Once("old", "sha", answer_of))
    assert await queue.expire(time.time() + 2 * 86_400) == 1
    _, replayed = await queue.submit_once([], Once("old", "other", answer_of))
    assert not replayed  # the key is free again


async def test_on_postgresql_a_number_taken_later_commits_later(postgres_url: str) -> None:
    """The commit-order trap: a transaction that takes its feed numbers and then commits late
    holds back every transaction that numbers after it, so a reader that has seen a number has
    seen every smaller one. Here: A numbers and stays open; B's numbering waits for A; a reader
    meanwhile sees neither; after A commits, B's number is larger than A's."""
    queue = await open_queue(postgres_url, lease_s=30)
    await queue.register()
    await queue.submit([job_for("http://h.example/a"), job_for("http://h.example/b")])
    await queue.close()
    a, b = await asyncpg.connect(postgres_url), await asyncpg.connect(postgres_url)
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        tables_a, tables_b = (
            PostgresTables(a, "x", time.time()),
            PostgresTables(b, "x", time.time()),
        )
        await tables_a.cancelled([1])  # a result each (a cancelled job's: no lease needed)
        await tables_b.cancelled([2])
        await tables_a.stamp_feed()  # A: number 1, not committed
        stamping_b = asyncio.create_task(tables_b.stamp_feed())
        await asyncio.sleep(0.5)
        assert not stamping_b.done()  # B waits for A's commit
        reader = await asyncio.to_thread(open_reader, postgres_url)
        assert await asyncio.to_thread(reader.feed, 0, 10) == []
        await ta.commit()
        await asyncio.wait_for(stamping_b, 10)
        await tb.commit()
        feed = await asyncio.to_thread(reader.feed, 0, 10)
        assert [(r["id"], r["cursor"]) for r in feed] == [(1, 1), (2, 2)]
        await asyncio.to_thread(reader.close)
    finally:
        await a.close()
        await b.close()


async def test_on_postgresql_a_commit_numbers_its_own_results_and_no_others(
    postgres_url: str,
) -> None:
    """A commit numbers the results its inserts added; a result recorded again (the same job
    and run) keeps its place, and the feed's clock counts each result once."""
    queue = await open_queue(postgres_url, lease_s=30)
    await queue.register()
    await queue.submit([job_for("http://h.example/a"), job_for("http://h.example/b")])
    await queue.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        for job_ids in ([1], [2], [1]):
            async with conn.transaction():
                tables = PostgresTables(conn, "x", time.time())
                await tables.cancelled(job_ids)
                await tables.stamp_feed()
        rows = await conn.fetch("SELECT job_id, seq FROM results ORDER BY job_id")
        assert [tuple(row) for row in rows] == [(1, 1), (2, 2)]
        assert await conn.fetchval("SELECT n FROM feed_clock") == 2
    finally:
        await conn.close()


async def read(queue: JobQueue, call: Callable[[QueueReader], _T]) -> _T:
    """`call` on the read side, in a thread (as the API reads: PostgreSQL's reader runs an
    event loop of its own)."""

    def run() -> _T:
        reader = open_reader(queue.location)  # type: ignore[attr-defined]
        try:
            return call(reader)
        finally:
            reader.close()

    return await asyncio.to_thread(run)
