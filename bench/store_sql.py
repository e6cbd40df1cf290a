"""The store's own cost per job, no network: submit N jobs over H hosts, then claim them in
batches of up to 100 per host and record them done in batches of 60, as the daemon does.
Prints the median over repetitions of µs per job spent in claim + record (SQL, the driver's
hand-offs, the counters' read-modify-write). Pin it to one core for steadier figures:

    taskset -c 1 .venv/bin/python bench/store_sql.py
    taskset -c 1 .venv/bin/python bench/store_sql.py --postgres postgresql://127.0.0.1/postgres

With --postgres (a server's maintenance database: each repetition makes a database of its
own, dropped after) the daemon's whole PostgreSQL round is timed, host leases included.
`--backlog N` queues N jobs at the first host before the N timed ones: every timed claim there
has a backlog of that size behind it (the claim's cost with millions queued at one host,
against the same run without them). `--history N` first fetches N jobs at another host, as
finished results already in the tables (retention not yet due); `--kept` gives every result a
kept body (a random sha256 digest, a WARC body_path), as the daemon's are:

    taskset -c 1 .venv/bin/python bench/store_sql.py --history 1000000 --kept --reps 3

`make bench` runs it as its `growth` section (`growth_figures`): each backend with and without
a history of kept results, interleaved, and the ratio. A cost that grows with the data (an
index on a random key, a search through dead row versions) shows as a ratio well over 1,
which the bench's other runs, on fresh databases, never see.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fetcher.backends import open_queue
from fetcher.batch import Batch
from fetcher.jobqueue import JobQueue
from fetcher.model import Exchange, JobRequest, JobState, Outcome
from fetcher.urls import parse_url


async def per_job_us(
    store: JobQueue, n: int, hosts: int, backlog: int, history: int = 0, kept: bool = False
) -> float:
    await store.register()
    for start in range(0, history, 100_000):  # results already there, at a host of their own
        chunk = range(start, min(start + 100_000, history))
        await store.submit([JobRequest(parse_url(f"http://old.example/{i}")) for i in chunk])
        await fetch_all(store, len(chunk), kept)
    for start in range(0, backlog, 100_000):  # at the first host, before the timed jobs
        chunk = range(start, min(start + 100_000, backlog))
        await store.submit([JobRequest(parse_url(f"http://h0.example/backlog/{i}")) for i in chunk])
    await store.submit(
        [JobRequest(parse_url(f"http://h{i % hosts}.example/{i}")) for i in range(n)]
    )
    started = time.perf_counter()
    await fetch_all(store, n, kept)
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed / n * 1e6


async def fetch_all(store: JobQueue, n: int, kept: bool) -> None:
    """Claim and record `n` jobs done, as the daemon does."""
    done = 0
    while done < n:
        await store.turn_hosts({}, 256)  # with several daemons: hosts are leased first
        walk = (await store.hosts_with_queued("", 64)).hosts
        jobs = await store.claim([(host, 100) for host in walk], lease_s=60)
        for i in range(0, len(jobs), 60):
            now = time.time()
            batch = jobs[i : i + 60]
            outcomes = [
                Outcome(j.id, JobState.DONE, 1, status=200, bytes=1024, latency_ms=1.0)
                for j in batch
            ]
            if kept:
                for outcome in outcomes:
                    outcome.body_sha256 = os.urandom(32).hex()
                    outcome.body_path = f"fetcher-x.warc#{outcome.job_id * 1000}"
            await store.record(
                Batch(outcomes, [Exchange(j.host, 200, 1024, 1.0, now) for j in batch])
            )
        done += len(jobs)


async def run_once(args: argparse.Namespace, tmp: Path) -> float:
    if not args.postgres:
        store = await open_queue(tmp / "s.db")
        return await per_job_us(store, args.jobs, args.hosts, args.backlog, args.history, args.kept)
    name = f"fetcher_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlunsplit(urlsplit(args.postgres)._replace(path=f"/{name}"))
        store = await open_queue(url)
        return await per_job_us(store, args.jobs, args.hosts, args.backlog, args.history, args.kept)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def growth_figures(smoke: bool, reps: int, postgres: str | None) -> list[str]:
    """The `growth` section of `make bench`: claim + record, µs a job, on a fresh database
    against one that holds a history of kept results (SQLite 300,000, PostgreSQL 100,000),
    repetitions interleaved; PostgreSQL only where `postgres` answers."""
    sizes: list[tuple[str, str | None, int]] = [("sqlite", None, 2_000 if smoke else 300_000)]
    if postgres is not None:
        sizes.append(("postgresql", postgres, 1_000 if smoke else 100_000))
    jobs, reps = (2_000, 1) if smoke else (20_000, reps)
    lines = [
        "### Costs that grow with the data: claim + record, µs a job "
        f"(`bench/store_sql.py --jobs {jobs} [--history N --kept]`, median of {reps})",
        "",
        "| backend | fresh database | with N results kept before | ÷ fresh |",
        "|---|---|---|---|",
    ]
    for backend, url, history in sizes:
        runs: dict[int, list[float]] = {0: [], history: []}
        for _ in range(reps):
            for before in runs:
                runs[before].append(_store_sql(jobs, before, url))
        fresh, grown = (statistics.median(runs[k]) for k in (0, history))
        lines.append(
            f"| {backend} | {fresh:.1f} | {grown:.1f} (N = {history:,}) | {grown / fresh:.2f} |"
        )
    print("\n".join(["", *lines]), flush=True)
    return lines


def _store_sql(jobs: int, history: int, postgres: str | None) -> float:
    """One repetition of this script, pinned to core 1 as the daemon is in `make bench`."""
    cmd = [sys.executable, __file__, "--jobs", str(jobs), "--reps", "1"]
    if history:
        cmd += ["--history", str(history), "--kept"]
    if postgres:
        cmd += ["--postgres", postgres]
    from run import pinned  # run.py imports this module: not at the top

    out = subprocess.run([*pinned(1), *cmd], capture_output=True, text=True, check=True).stdout
    found = re.search(r"([\d.]+) µs a job", out)
    if found is None:
        raise RuntimeError(f"store_sql.py printed no figure: {out!r}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="a server's maintenance database")
    parser.add_argument("--backlog", type=int, default=0, help="jobs queued at one host first")
    parser.add_argument("--history", type=int, default=0, help="results there before the run")
    parser.add_argument("--kept", action="store_true", help="each result with a kept body")
    args = parser.parse_args()
    runs = []
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(asyncio.run(run_once(args, Path(tmp))))
    backend = "postgresql" if args.postgres else "sqlite"
    print(f"{backend}: claim + record: {statistics.median(runs):.1f} µs a job (median of"
          f" {args.reps}; runs {', '.join(f'{r:.1f}' for r in runs)})")  # fmt: skip


if __name__ == "__main__":
    main()
