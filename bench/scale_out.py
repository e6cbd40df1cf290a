"""PostgreSQL against SQLite, and several daemons on one PostgreSQL queue (`make bench`).

    .venv/bin/python bench/scale_out.py [--postgres URL] [--smoke]

`--postgres`: a server's maintenance database (default the machines' own, 127.0.0.1:5432);
every run makes a database of its own there and drops it after.

1. One daemon, PostgreSQL ÷ SQLite: 20,000 URLs at 1 and 16 hosts against nginx (1 kB answers),
   runs interleaved, medians.
2. One, two and three daemons on one PostgreSQL queue against an origin that answers in 100 ms
   (the demo origin, a process of its own), 16 hosts, 16 requests in flight a daemon: there,
   concurrency bounds a daemon, not the CPU, and throughput should grow with the daemons.
3. 100,000 hosts with one job each, one daemon, on both backends: drain time, peak memory.
4. The database's own work per job (bench/store_sql.py) on both, and with a backlog of a
   million jobs at one host: the claim's cost stays flat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from run import (
    ADDRESSES,
    PORT,
    SCALE_PORT,
    Nginx,
    count_lines,
    fetcher_env,
    fresh_db,
    pinned,
    wait_for,
)

from fetcher import stats
from fetcher.backends import open_reader

HERE = Path(__file__).parent
FETCHER = [sys.executable, "-m", "fetcher"]
SLOW_PORT = 18_089


@contextlib.contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh PostgreSQL database on `server`, dropped afterwards."""
    name = f"fetcher_bench_{uuid.uuid4().hex[:8]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def queue_db(backend: str, workdir: Path, server: str) -> Iterator[str]:
    """FETCHER_DB for a fresh queue on `backend`."""
    if backend == "sqlite":
        yield str(fresh_db(workdir / "bench.db"))
    else:
        with database(server) as url:
            yield url


def drain(urls: Path, db: str, daemons: int, workdir: Path, **variables: object) -> float:
    """Submit `urls`, then `daemons` daemons drain them together; seconds from their start to
    the last one's exit. Every job must end done."""
    env = fetcher_env(Path("unused"), **variables) | {
        "FETCHER_DB": db,
        "FETCHER_BODY_DIR": str(workdir / "bodies"),
        "FETCHER_SAVE_BODIES": "false",
        "FETCHER_ROBOTS": "ignore",
    }
    subprocess.run([*FETCHER, "submit", "-f", str(urls)], env=env, check=True, capture_output=True)
    cores = ([1], [1, 0, 1])[daemons > 1]  # one daemon on core 1; more share both cores
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*pinned(cores[i % len(cores)]), *FETCHER, "run", "--drain"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(daemons)
    ]
    for proc in procs:
        if proc.wait(1800) != 0:
            raise RuntimeError(f"a daemon exited {proc.returncode}")
    elapsed = time.perf_counter() - started
    reader = open_reader(Path(db) if not db.startswith("postgresql") else db)
    done = stats.status(reader)["done"]
    reader.close()
    if done != count_lines(urls):
        raise RuntimeError(f"{done} of {count_lines(urls)} jobs done")
    return elapsed


def one_daemon(workdir: Path, server: str, n: int, reps: int) -> list[str]:
    lines = [
        f"### One daemon, PostgreSQL ÷ SQLite: {n:,} URLs, C=64, 1 kB answers, median of {reps}",
        "",
        "| hosts | backend | req/s (median) | runs | PostgreSQL ÷ SQLite |",
        "|---|---|---|---|---|",
    ]
    for hosts in (1, 16):
        urls = workdir / f"urls-{hosts}.txt"
        urls.write_text("".join(f"http://{ADDRESSES[i % hosts]}:{PORT}/{i}\n" for i in range(n)))
        rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
        for _ in range(reps):
            for backend in rates:
                with queue_db(backend, workdir, server) as db:
                    seconds = drain(urls, db, 1, workdir, max_concurrency=64,
                                    host_concurrency=64, host_rate=0)  # fmt: skip
                rates[backend].append(n / seconds)
        ratio = statistics.median(rates["postgresql"]) / statistics.median(rates["sqlite"])
        for backend, values in rates.items():
            runs = ", ".join(f"{v:,.0f}" for v in values)
            shown = f"{ratio:.2f}" if backend == "postgresql" else ""
            lines.append(
                f"| {hosts} | {backend} | {statistics.median(values):,.0f} | {runs} | {shown} |"
            )
        print("\n".join(lines[-2:]), flush=True)
    return lines


@contextlib.contextmanager
def slow_origin() -> Iterator[None]:
    """The demo origin in a process of its own on core 0: /slow/100/… answers after 100 ms."""
    code = (
        "import time; from fetcher.demo import Origin; "
        f"o = Origin({ADDRESSES!r}, {SLOW_PORT}).start(); time.sleep(86400)"
    )
    proc = subprocess.Popen([*pinned(0), sys.executable, "-c", code])
    try:
        wait_for(f"http://{ADDRESSES[0]}:{SLOW_PORT}/ok/")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def several_daemons(workdir: Path, server: str, smoke: bool, reps: int) -> list[str]:
    n = 480 if smoke else 4_800
    urls = workdir / "urls-slow.txt"
    urls.write_text(
        "".join(f"http://{ADDRESSES[i % 16]}:{SLOW_PORT}/slow/100/{i}\n" for i in range(n))
    )
    lines = [
        f"### Several daemons on one PostgreSQL queue: {n:,} URLs over 16 hosts answering in"
        f" 100 ms, 16 in flight a daemon, median of {reps}",
        "",
        "| daemons | req/s (median) | runs | ÷ one daemon | ideal |",
        "|---|---|---|---|---|",
    ]
    rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
    with slow_origin():
        for _ in range(reps):
            for daemons in rates:
                with database(server) as db:
                    seconds = drain(urls, db, daemons, workdir, max_concurrency=16,
                                    host_concurrency=16, host_rate=0)  # fmt: skip
                rates[daemons].append(n / seconds)
    one = statistics.median(rates[1])
    for daemons, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {daemons} | {median:,.0f} | {runs} | {median / one:.2f} | {daemons} |")
    print("\n".join(lines), flush=True)
    return lines


def many_hosts(workdir: Path, server: str, smoke: bool) -> list[str]:
    n = 5_000 if smoke else 100_000
    urls = workdir / "urls-hosts.txt"
    with urls.open("w") as f:
        for h in range(n):
            f.write(f"http://127.{1 + h // 62_500}.{(h // 250) % 250}.{2 + h % 250}"
                    f":{SCALE_PORT}/{h}\n")  # fmt: skip
    lines = [
        f"### {n:,} hosts, one job each, one daemon, C=64",
        "",
        "| backend | seconds | jobs/s |",
        "|---|---|---|",
    ]
    for backend in ("sqlite", "postgresql"):
        with queue_db(backend, workdir, server) as db:
            seconds = drain(urls, db, 1, workdir, max_concurrency=64, host_rate=0)
        lines.append(f"| {backend} | {seconds:.1f} | {n / seconds:,.0f} |")
        print(lines[-1], flush=True)
    return lines


def store_work(server: str, smoke: bool) -> list[str]:
    jobs, backlog = (2_000, 20_000) if smoke else (20_000, 1_000_000)
    script = str(HERE / "store_sql.py")
    runs = [
        ("SQLite, 16 hosts", []),
        ("PostgreSQL, 16 hosts", ["--postgres", server]),
        ("PostgreSQL, 1 host", ["--postgres", server, "--hosts", "1"]),
        (f"PostgreSQL, 1 host, {backlog:,} queued behind", [
            "--postgres", server, "--hosts", "1", "--backlog", str(backlog), "--reps", "1"]),
    ]  # fmt: skip
    lines = [
        f"### The database's work per job (bench/store_sql.py, {jobs:,} jobs)",
        "",
        "| run | claim + record |",
        "|---|---|",
    ]
    for label, extra in runs:
        out = subprocess.run(
            [*pinned(1), sys.executable, script, "--jobs", str(jobs), *extra],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        lines.append(f"| {label} | {out.split(': ', 2)[-1]} |")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql://127.0.0.1:5432/postgres")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    reps = 1 if args.smoke else args.reps
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-bench-pg-"))
    if not Nginx.available():
        raise SystemExit("this benchmark needs nginx (Debian's nginx-light)")
    report: list[str] = []
    with Nginx(workdir, scale=True):
        report += one_daemon(workdir, args.postgres, 500 if args.smoke else 20_000, reps)
        report += ["", *many_hosts(workdir, args.postgres, args.smoke)]
    report += ["", *several_daemons(workdir, args.postgres, args.smoke, min(reps, 2))]
    report += ["", *store_work(args.postgres, args.smoke)]
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "postgres.md").write_text("\n".join(report) + "\n")
    print(f"\n(written to {out / 'postgres.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
