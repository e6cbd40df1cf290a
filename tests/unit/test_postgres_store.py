"""The PostgreSQL queue, against a real server: host leases and their fencing, handover of the
rate schedule, the fair share, the seed's read-modify-write across daemons, moved jobs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from fetcher.batch import Batch
from fetcher.model import Exchange, HostRate, JobState, Outcome
from fetcher.postgres.store import PostgresQueue
from fetcher.urls import parse_url
from tests.jobs import job_for

H1, H2 = "h1.example", "h2.example"


@pytest.fixture
async def daemons(postgres_url: str) -> AsyncIterator[list[PostgresQueue]]:
    """Two daemons' queues on one database, registered."""
    queues = [await PostgresQueue.open(postgres_url, lease_s=30) for _ in range(2)]
    for queue in queues:
        await queue.register()
    yield queues
    for queue in queues:
        await queue.close()


async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


def urls(host: str, n: int) -> list[str]:
    return [f"http://{host}/{i}" for i in range(n)]


async def test_a_late_commit_after_a_takeover_changes_nothing(
    daemons: list[PostgresQueue], postgres_url: str
) -> None:
    """A holds a host and claims its jobs; its lease runs out (cut off from the database) and B
    takes the host over: A's outcomes and requests, committed late, change no job, result or
    counter; B's jobs are the same ones, back in the queue, and B's commit counts. A learns
    at its next renewal that the host is lost: no request may start there any more."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 3)])
    [lease] = await a.turn_hosts({}, want=10)
    assert lease.host == H1 and a.lease_end(H1) > time.monotonic() + 25
    assert b.lease_end(H1) == -math.inf
    jobs = await a.claim([(H1, 2)], lease_s=30)
    assert len(jobs) == 2
    assert await b.turn_hosts({}, want=10) == []  # held, and the lease is good
    await sql(postgres_url, "UPDATE hosts SET lease_until = 0")  # A's lease ran out
    [taken] = await b.turn_hosts({}, want=10)
    assert taken.host == H1
    again = await b.claim([(H1, 3)], lease_s=30)
    assert {j.id for j in jobs} < {j.id for j in again}  # A's jobs went back to the queue

    exchange = Exchange(H1, 200, 10, 5.0, time.time())
    await a.record(
        Batch([Outcome(j.id, JobState.DONE, 1, status=200) for j in jobs], [exchange] * 2)
    )
    assert await sql(postgres_url, "SELECT * FROM results") == []
    assert await sql(postgres_url, "SELECT * FROM host_counters") == []
    await a.heartbeat(30)
    assert a.lease_end(H1) == -math.inf and list(a.held_hosts()) == []

    await b.record(
        Batch([Outcome(j.id, JobState.DONE, 1, status=200) for j in again], [exchange] * 3)
    )
    assert len(await sql(postgres_url, "SELECT * FROM results")) == 3
    [row] = await sql(postgres_url, "SELECT requests FROM host_stats")
    assert row["requests"] == 3
    assert (await b.counts())["done"] == 3


async def test_a_dead_holders_host_with_nothing_queued_is_freed_by_the_reaper(
    daemons: list[PostgresQueue], postgres_url: str
) -> None:
    """A claimed every job of its host, then its lease ran out: no one would acquire a host with
    nothing queued, so the next renewal of any daemon frees it and puts its jobs back."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 2)])
    await a.turn_hosts({}, want=10)
    assert len(await a.claim([(H1, 2)], lease_s=30)) == 2
    await sql(postgres_url, "UPDATE hosts SET lease_until = 0")
    assert await b.heartbeat(30) == 2
    [lease] = await b.turn_hosts({}, want=10)
    assert lease.host == H1 and len(await b.claim([(H1, 5)], lease_s=30)) == 2


async def test_a_daemon_taken_for_dead_keeps_its_hosts_until_their_leases_end(
    daemons: list[PostgresQueue], postgres_url: str
) -> None:
    """A's heartbeat is older than a lease (cut off for a while), but a host it acquired since
    is leased further: B's renewal removes A's row, not that host nor its jobs. Once the host's
    own lease ends, the next renewal frees it and puts its jobs back. A, back, is live again."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 2)])
    await a.turn_hosts({}, want=10)
    assert len(await a.claim([(H1, 2)], lease_s=30)) == 2
    await sql(postgres_url, "UPDATE daemons SET heartbeat_at = 0 WHERE id = $1", a.owner)
    assert await b.heartbeat(30) == 0
    [host] = await sql(postgres_url, "SELECT owner FROM hosts WHERE host = $1", H1)
    assert host["owner"] == a.owner
    assert await sql(postgres_url, "SELECT * FROM daemons WHERE id = $1", a.owner) == []
    await sql(postgres_url, "UPDATE hosts SET lease_until = 0")
    assert await b.heartbeat(30) == 2
    await a.heartbeat(30)
    assert len(await sql(postgres_url, "SELECT * FROM daemons")) == 2
    assert a.lease_end(H1) == -math.inf


async def test_a_handed_over_host_keeps_its_schedule_and_pause(
    daemons: list[PostgresQueue],
) -> None:
    """A hands its host back (shutdown) with its GCRA time and pause: B acquires it with them."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 2)])
    await a.turn_hosts({}, want=10)
    now = time.time()
    schedule = HostRate(tat=now + 3.0, paused_until=now + 7.0)
    await a.release_all({H1: schedule})
    [lease] = await b.turn_hosts({}, want=10)
    assert lease.host == H1 and lease.rate == schedule


async def test_an_expired_lease_is_taken_over_no_sooner_than_its_end(
    daemons: list[PostgresQueue], postgres_url: str
) -> None:
    """A takeover (the holder's lease ran out) starts the host's schedule no earlier than the
    end of that lease: its last requests may not be in the stored schedule."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 2)])
    await a.turn_hosts({}, want=10)
    ended = time.time() - 0.5
    await sql(postgres_url, "UPDATE hosts SET lease_until = $1, tat = 0", ended)
    [lease] = await b.turn_hosts({}, want=10)
    assert lease.rate.tat == pytest.approx(ended)


async def test_the_hosts_are_shared_fairly_and_the_excess_is_handed_back(
    daemons: list[PostgresQueue],
) -> None:
    """A alone takes every host with work; once B is live too, A's share is half: it stops
    claiming from the excess and hands those hosts back when idle, backlog and all; B then
    acquires them."""
    a, b = daemons
    hosts = [f"h{i}.example" for i in range(4)]
    await a.submit([job_for(u) for h in hosts for u in urls(h, 3)])
    await b.unregister()
    assert [len(await a.turn_hosts({}, want=10)) for _ in range(2)] == [4, 0]
    await b.register()
    assert await a.turn_hosts({}, want=10) == []
    walk = (await a.hosts_with_queued("", 64)).hosts
    assert len(walk) == 2  # the excess is not claimed from any more
    handed = {h: HostRate() for h in a.held_hosts() if h not in walk}
    await a.turn_hosts(handed, want=0)
    assert sorted(a.held_hosts()) == sorted(walk)
    taken = await b.turn_hosts({}, want=10)
    assert sorted(lease.host for lease in taken) == sorted(handed)


async def test_counts_add_up_across_daemons_and_closed_shards(
    daemons: list[PostgresQueue], postgres_url: str
) -> None:
    """Each daemon counts jobs in its own shard; the `queue` view sums them, also after a
    daemon's shard was folded into the shared one at close."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 4) + urls(H2, 4)])
    await a.turn_hosts({}, want=1)
    await b.turn_hosts({}, want=1)
    for queue in daemons:
        [host] = queue.held_hosts()
        jobs = await queue.claim([(host, 4)], lease_s=30)
        await queue.record(Batch([Outcome(j.id, JobState.DONE, 1, status=200) for j in jobs]))
    assert await a.counts() == {
        "queued": 0,
        "retrying": 0,
        "running": 0,
        "done": 8,
        "failed": 0,
        "cancelled": 0,
    }
    await b.close()
    shards = {row["shard"] for row in await sql(postgres_url, "SELECT shard FROM job_counts")}
    assert not any(shard.startswith(b.owner) for shard in shards)
    assert (await a.counts())["done"] == 8


async def test_a_redirect_to_another_daemons_host_moves_the_job_there(
    daemons: list[PostgresQueue],
) -> None:
    """A job redirected to a host another daemon holds is queued at that host, with its hop
    and its count of hops: that host's holder claims it and goes on from there."""
    a, b = daemons
    await a.submit([job_for("http://h1.example/start")])
    await a.submit([job_for("http://h2.example/other")])
    await a.turn_hosts({}, want=1)
    await b.turn_hosts({}, want=1)
    holder = a if H1 in a.held_hosts() else b
    other = b if holder is a else a
    [job] = await holder.claim([(H1, 1)], lease_s=30)
    hop = parse_url("http://h2.example/landed")
    await holder.record(Batch([Outcome(job.id, JobState.QUEUED, 0, moved_to=hop, hops=1)]))
    moved = [j for j in await other.claim([(H2, 5)], lease_s=30) if j.id == job.id]
    assert len(moved) == 1
    assert moved[0].target.url == hop.url and moved[0].hops == 1 and moved[0].url == job.url


async def test_concurrent_commits_of_two_daemons_lose_no_update(
    daemons: list[PostgresQueue], postgres_url: str
) -> None:
    """The seed's pattern at cluster scale: both daemons commit requests for one host at once,
    each batch a read-modify-write of its counters under the host's row lock; none is lost."""
    a, b = daemons
    await a.submit([job_for(u) for u in urls(H1, 1)])
    await a.turn_hosts({}, want=1)
    n = 50

    async def commit(queue: PostgresQueue, i: int) -> None:
        await queue.record(Batch([], [Exchange(H1, 200, 1, 1.0, time.time())] * (i % 3 + 1)))

    # B's requests to a host it never held count too (a hop elsewhere): both write the row
    await asyncio.gather(*(commit(q, i) for i in range(n) for q in (a, b)))
    [row] = await sql(postgres_url, "SELECT requests, bytes FROM host_counters")
    expected = 2 * sum(i % 3 + 1 for i in range(n))
    assert row["requests"] == expected == row["bytes"]


async def test_claims_and_commits_of_one_daemon_run_side_by_side_without_a_deadlock(
    daemons: list[PostgresQueue],
) -> None:
    """A daemon claims on one connection while it commits on the other, at one host: the claim's
    trigger and the commit both write the host's row and the job counts, and they must never
    wait on each other in a cycle (a deadlock costs a second and a retry: here, an error)."""
    a, _ = daemons
    total = 2000
    await a.submit([job_for(u) for u in urls(H1, total)])
    await a.turn_hosts({}, want=1)
    claimed: asyncio.Queue[list[int]] = asyncio.Queue()

    async def claimer() -> None:
        while jobs := await a.claim([(H1, 10)], lease_s=30):
            claimed.put_nowait([j.id for j in jobs])
        claimed.put_nowait([])

    async def committer() -> None:
        while ids := await claimed.get():
            exchanges = [Exchange(H1, 200, 1, 1.0, time.time())] * len(ids)
            await a.record(
                Batch([Outcome(i, JobState.DONE, 1, status=200) for i in ids], exchanges)
            )

    await asyncio.wait_for(asyncio.gather(claimer(), committer()), 60)
    assert (await a.counts())["done"] == total
