"""Recurring jobs' figures (`make bench`, or `python bench/run.py --only recurring`):

One daemon (`fetcher run`, SQLite, on core 1; nginx on core 0) over 1,000 hosts, its CPU time
(user + system, all threads, from /proc) counted round by round:

one-shot     100,000 plain GET jobs, submitted and run to `done`;
first runs   100,000 jobs with `every` 1 h, to the end of their first run (200s);
revalidated  the same jobs made due at once (their next run moved to now, as an hour later
             would), to the end of that run: conditional GETs answered 304 by nginx's static
             file handler.

The one-shot and revalidated rounds alternate, `--reps` times each, and the medians are
quoted: the CPU a recurring run costs the daemon against a one-shot job's. The database's
growth (pages in use, freelist excluded) over each revalidated round gives its size per 1M
runs (a result row per run, until FETCHER_RETENTION_DAYS prunes it). Robots are ignored in
every round so that each counts the run's own machinery.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import SCALE_PORT, fetcher_env, fresh_db, pinned

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def used_bytes(db: sqlite3.Connection) -> int:
    (pages,), (free,), (size,) = (
        db.execute(f"PRAGMA {name}").fetchone()
        for name in ("page_count", "freelist_count", "page_size")
    )
    return int((pages - free) * size)


def wait_for_count(db: sqlite3.Connection, sql: str, want: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (got,) = db.execute(sql).fetchone()
        if got >= want:
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out waiting for {want}: {sql} gave {got}")


def _ms(seconds: list[float]) -> str:
    return ", ".join(f"{s * 1000:.3f}" for s in seconds)


def recurring_figures(workdir: Path, smoke: bool, reps: int) -> list[str]:
    n, hosts = (3_000, 100) if smoke else (100_000, 1_000)
    timeout_s = 120 if smoke else 900

    def urls(kind: str) -> str:
        return "".join(
            f"http://127.0.{h // 250}.{2 + h % 250}:{SCALE_PORT}/page/{kind}/{i}\n"
            for i, h in ((i, i % hosts) for i in range(n))
        )

    db_path = fresh_db(workdir / "recurring.db")
    env = fetcher_env(db_path, max_concurrency=64, host_concurrency=4, host_rate=0, robots="ignore")
    fetcher = [sys.executable, "-m", "fetcher"]

    def submit(kind: str, *flags: str) -> None:
        subprocess.run(
            [*fetcher, "submit", "-f", "-", *flags], input=urls(kind), text=True, env=env,
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip

    log = open(workdir / "recurring.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([*pinned(1), *fetcher, "run"], env=env, stdout=log, stderr=log)
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    one_shot: list[float] = []
    revalidated: list[float] = []
    growth: list[float] = []
    rates: list[float] = []  # runs a second, round by round in the order run
    try:
        time.sleep(2)  # started and idle

        def round_cpu(start: Callable[[], None], sql: str) -> float:
            before, began = cpu_s(daemon.pid), time.perf_counter()
            start()
            wait_for_count(db, sql, n, timeout_s)
            rates.append(n / (time.perf_counter() - began))
            return (cpu_s(daemon.pid) - before) / n

        submit("rec", "--every", "3600")
        first = round_cpu(lambda: None, "SELECT count(*) FROM results WHERE url LIKE '%/rec/%'")
        for rep in range(reps):
            submit(f"once{rep}")
            one_shot.append(
                round_cpu(
                    lambda: None,
                    f"SELECT count(*) FROM jobs WHERE state = 'done' AND url LIKE '%/once{rep}/%'",
                )
            )
            run = rep + 2
            wait_for_count(
                db, "SELECT count(*) FROM jobs WHERE every_s IS NOT NULL AND state = 'retrying'",
                n, timeout_s,
            )  # fmt: skip
            size = used_bytes(db)

            def due_now() -> None:
                db.execute(
                    "UPDATE jobs SET next_attempt_at = ? WHERE every_s IS NOT NULL"
                    " AND state = 'retrying'",
                    (time.time(),),
                )

            revalidated.append(
                round_cpu(due_now, f"SELECT count(*) FROM results WHERE run = {run}")
            )
            growth.append((used_bytes(db) - size) / n)
        (not_modified,) = db.execute(
            "SELECT count(*) FROM results WHERE run > 1 AND status = 304"
        ).fetchone()
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
        db.close()
    once_ms = statistics.median(one_shot) * 1000
    again_ms = statistics.median(revalidated) * 1000
    per_run = statistics.median(growth)
    lines = [
        "### Recurring jobs",
        "",
        f"- {n:,} jobs over {hosts:,} hosts, one daemon on SQLite, C=64, 4 a host, no rate;"
        f" daemon CPU per job or run, medians of {reps} alternating rounds:",
        f"  one-shot job {once_ms:.3f} ms ({_ms(one_shot)}); recurring first run"
        f" {first * 1000:.3f} ms (one round); revalidated run {again_ms:.3f} ms"
        f" ({_ms(revalidated)};"
        f" {again_ms / once_ms:.2f}x the one-shot; {not_modified:,} of {n * reps:,} answered 304).",
        "- Runs a second, round by round (first runs, then one-shot and revalidated in turn): "
        + ", ".join(f"{r:,.0f}" for r in rates)
        + ".",
        f"- Database growth per run: {per_run:,.0f} bytes (rounds: "
        + ", ".join(f"{g:,.0f}" for g in growth)
        + f"); per 1M runs {per_run * 1e6 / 2**20:,.0f} MiB, until retention prunes results.",
    ]
    print("\n".join(lines), flush=True)
    return lines
