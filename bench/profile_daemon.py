"""Where a kept 100 kB body's time goes: `fetcher run --drain` of 5,000 distinct 100 kB answers
(nginx, one host, C=64) under cProfile, for each git revision given (its `src/` first on
PYTHONPATH, as bench/ab.py does). Prints the wall time, the daemon's CPU a request and the
functions that took the most of the event loop's thread (cProfile sees that thread only: the
WARC writer's thread is outside it, and is counted by the CPU figure).

    .venv/bin/python bench/profile_daemon.py b042ef1 HEAD
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ab import checkout
from run import ADDRESSES, PORT, Nginx, fetcher_env, fresh_db, pinned

GROUPS = {  # a piece of a function's file:name -> what it is part of (the first match wins)
    "of '_io.": "file writes and reads (the event loop's own)",
    "posix.": "other file system calls (stat, open, rename, mkdir)",
    "_socket.socket": "socket reads and writes",
    "epoll": "waiting for the network (epoll)",
    "hashlib": "hashing",
    "bodies.py": "keeping bodies (bodies.py, warc.py)",
    "warc.py": "keeping bodies (bodies.py, warc.py)",
    "tempfile": "keeping bodies (temporary files)",
    "aiohttp": "the HTTP client (aiohttp)",
    "sqlite": "the database (aiosqlite, sqlite3)",
    "structlog": "logging",
    "log.py": "logging",
    "asyncio": "the event loop",
    "fetcher/": "fetcher's own code",
}


def profile(src: Path, urls: Path, n: int, workdir: Path, label: str) -> None:
    db = fresh_db(workdir / "profile.db")
    subprocess.run(["rm", "-rf", str(workdir / "bodies")], check=True)
    env = fetcher_env(db, max_concurrency=64, host_concurrency=64, host_rate=0)
    env["PYTHONPATH"] = str(src)
    fetcher = [sys.executable, "-m", "fetcher"]
    subprocess.run([*fetcher, "submit", "-f", str(urls)], env=env, check=True, capture_output=True)
    out = workdir / f"profile-{label}.out"
    before, started = os.times(), time.perf_counter()
    with (workdir / "profile.log").open("wb") as log:
        subprocess.run(
            [*pinned(1), sys.executable, "-m", "cProfile", "-o", str(out), "-m", "fetcher", "run",
             "--drain"],
            env=env, stdout=log, stderr=log, check=True,
        )  # fmt: skip
    wall, after = time.perf_counter() - started, os.times()
    cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    stats = pstats.Stats(str(out))
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    for (file, _, name), row in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{file}:{name}"
        group = next((g for key, g in GROUPS.items() if key in where), "the rest")
        groups[group] = groups.get(group, 0.0) + row[2]
    print(f"\n### {label}: {n / wall:,.0f} req/s, {cpu / n * 1e6:,.0f} µs CPU a request (profiled)")
    print("\n| part (event loop's thread, own time) | µs a request | share |\n|---|---|---|")
    for group, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {seconds / n * 1e6:,.0f} | {seconds / total:.0%} |")
    print("\nTop functions by own time:\n```")
    stats.sort_stats("tottime").print_stats(15)
    print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("revs", nargs="+")
    parser.add_argument("--urls", type=int, default=5_000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-profile-"))
    srcs = {rev: checkout(rev, workdir / f"rev{i}") for i, rev in enumerate(args.revs)}
    urls = workdir / "urls.txt"
    urls.write_text("".join(f"http://{ADDRESSES[0]}:{PORT}/100k/{i}\n" for i in range(args.urls)))
    with Nginx(workdir, scale=False):
        for rev, src in srcs.items():
            profile(src, urls, args.urls, workdir, rev)


if __name__ == "__main__":
    main()
