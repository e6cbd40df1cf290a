"""The store's own cost per job, no network: submit N jobs over H hosts, then claim them in
batches of up to 100 per host and record them done in batches of 60, as the daemon does.
Prints the median over repetitions of µs per job spent in claim + record (SQL, aiosqlite's
hand-offs, the counters' read-modify-write). Pin it to one core for steadier figures:

    taskset -c 1 .venv/bin/python bench/store_sql.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from fetcher.model import Exchange, JobState, Outcome
from fetcher.sqlite.store import SqliteQueue as Store
from fetcher.urls import parse_url


async def per_job_us(path: Path, n: int, hosts: int) -> float:
    store = await Store.open(path)
    await store.submit([parse_url(f"http://h{i % hosts}.example/{i}") for i in range(n)])
    started, done = time.perf_counter(), 0
    while done < n:
        walk = await store.hosts_with_queued("", 64)
        jobs = await store.claim([(host, 100) for host in walk], lease_s=60)
        for i in range(0, len(jobs), 60):
            now = time.time()
            batch = jobs[i : i + 60]
            await store.record(
                [Outcome(j.id, JobState.DONE, 1, status=200, bytes=1024, latency_ms=1.0)
                 for j in batch],
                [Exchange(j.host, 200, 1024, 1.0, now) for j in batch],
            )  # fmt: skip
        done += len(jobs)
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    runs = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(asyncio.run(per_job_us(Path(tmp) / f"s{rep}.db", args.jobs, args.hosts)))
    print(f"claim + record: {statistics.median(runs):.1f} µs a job (median of {args.reps};"
          f" runs {', '.join(f'{r:.1f}' for r in runs)})")  # fmt: skip


if __name__ == "__main__":
    main()
