"""`make bench`: fetcher against the bare loops, its politeness, and its scale, on loopback.

    throughput   nginx (or the demo origin) pinned to core 0, each client pinned to core 1;
                 for 1 and 16 hosts, interleaved repetitions of: `fetcher run --drain` (fresh
                 database, URLs submitted beforehand), the bare httpx + Semaphore loop with httpx's
                 default transport, the same over fetcher's own aiohttp transport, and over
                 httpx-aiohttp's and Scrapy when the bench extra installed them; and fetcher with
                 FETCHER_ROBOTS=ignore, to price the robots.txt check (the origin answers 404
                 there; the bare loops ask for no robots.txt). Requests/s is URLs / wall time of
                 the client's process.
    politeness   achieved rate and the worst one-second window for one host at a set rate; the
                 head-of-line scenario (11 hosts x 20 URLs at 2/s each, global cap 4).
    bodies       distinct answers of 1 kB, 100 kB (5,000 URLs) and 1 MB (1,000), one host and 16,
                 C=64: fetcher keeping bodies as WARC against the bare aiohttp loop; at 100 kB
                 also FETCHER_WARC_GZIP=true and FETCHER_SAVE_BODIES=false. With
                 --daemon-free, fetcher's drains are not pinned (its writer thread may use
                 core 0 beside nginx), the bare loop still is.
    api          the HTTP API (bench/api.py): aiohttp's server against uvicorn's, submitting
                 through it against `fetcher submit`, fetching while it is polled.
    growth       the store's claim + record on a fresh database against one holding a history
                 of kept results (bench/store_sql.py), SQLite and, where it answers,
                 PostgreSQL at --postgres (a server's maintenance database).
    recurring    100,000 recurring jobs over 1,000 hosts (bench/recurring.py): the daemon's CPU
                 per revalidated run against a one-shot job's, the database's growth per run.
    requests     jobs that are requests: a 1 kB POST body and three headers a job, against the
                 bare aiohttp loop sending the same; beside the bare GET of the same URLs.
    polite       10,000 URLs over 2,000 host keys (127.0.1-8.1-250), 5 a host, each at 2/s, burst
                 1, 4 in flight, C=64, the demo origin answering in 50 ms: `run --drain` wall time
                 against the ideal (64 slots x 50 ms = 1,280 req/s, or a host's own rate if
                 that is slower).
    scale        (--scale) submit of 1,000,000 URLs over 10,000 hosts; the daemon's RSS with them
                 queued and at 10k / 100k done; status and stats query times meanwhile.

Prints Markdown; BENCHMARKS.md keeps the figures of a run with the command that made them.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import functools
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import asyncpg
import httpx

from fetcher import __version__, stats
from fetcher.backends import open_reader
from fetcher.demo import Origin

HERE = Path(__file__).parent
PORT = 18080
SCALE_PORT = 18081
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 18)]
BODY = "x" * 1023
SIZES = {"1k": 1_000, "100k": 102_400, "1m": 1_048_576}  # the distinct answers under /<name>/


def compiled(src: Path) -> Path:
    """`src` with its modules compiled ahead, as an installed package's are: with
    PYTHONDONTWRITEBYTECODE set (as on these machines) an editable install's are compiled
    again in every process, ~40 ms of each drain's start (BENCHMARKS.md, "start-up")."""
    compileall.compile_dir(src, quiet=1)
    return src


def pinned(core: int) -> list[str]:
    """`taskset -c CORE` where the machine has two cores and taskset; nothing otherwise."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)]
    return []


# -- the origin -------------------------------------------------------------------------------


class Nginx:
    """nginx from Debian's packages, one worker, a 1 kB answer on 16 loopback addresses; under
    /1k/, /100k/ and /1m/ answers of that size that start with their own URI (so every body is
    distinct, as real pages are); under /page/ a static 1 kB file (an ETag, a 304 for a
    conditional GET)."""

    def __init__(self, workdir: Path, scale: bool) -> None:
        www = workdir / "www"
        www.mkdir(exist_ok=True)
        for name, size in SIZES.items():  # distinct answers: each starts with its own URI
            (www / f"{name}.txt").write_bytes(b"@@URI@@\n" + os.urandom(size // 2).hex().encode())
            (www / f"{name}.txt").chmod(0o644)
        (www / "page.txt").write_text(BODY + "\n")
        for path in (workdir, www):  # nginx's workers run as another user when started as root
            path.chmod(0o755)
        (www / "page.txt").chmod(0o644)
        listens = [f"listen {a}:{PORT};" for a in ADDRESSES]
        if scale:  # 10,000 host keys: 127.0.x.y, reachable through the wildcard address
            listens.append(f"listen {SCALE_PORT};")
        distinct = "\n".join(
            f"""    location /{name}/ {{
      root {www}; try_files /{name}.txt =404; default_type text/plain;
      sub_filter '@@URI@@' '$request_uri'; sub_filter_once on; sub_filter_types *;
    }}"""
            for name in SIZES
        )
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  server {{
    {" ".join(listens)}
    location / {{ default_type text/plain; return 200 "{BODY}\\n"; }}
    location = /robots.txt {{ return 404; }}
    location /page/ {{ root {www}; try_files /page.txt =404; default_type text/plain; }}
{distinct}
  }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        if shutil.which("nginx"):
            return True
        if os.geteuid() == 0 and shutil.which("apt-get"):
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)  # type: ignore[call-overload]
            subprocess.run(  # type: ignore[call-overload]
                ["apt-get", "install", "-y", "-qq", "nginx-light"],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                check=False,
                **quiet,
            )
        return shutil.which("nginx") is not None

    def __enter__(self) -> Nginx:
        nginx = shutil.which("nginx") or "nginx"
        self.proc = subprocess.Popen(
            [*pinned(0), nginx, "-c", str(self.conf), "-p", str(self.conf.parent)]
        )
        wait_for(f"http://{ADDRESSES[0]}:{PORT}/")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class FallbackOrigin:
    """The demo origin (aiohttp) in a process of its own on core 0, when nginx is not to be had.
    It is slower than nginx: every client's figure is lower, the ratios still compare them."""

    def __enter__(self) -> FallbackOrigin:
        code = (
            "import time; from fetcher.demo import Origin; "
            f"o = Origin({ADDRESSES!r}, {PORT}).start(); time.sleep(86400)"
        )
        self.proc = subprocess.Popen([*pinned(0), sys.executable, "-c", code])
        wait_for(f"http://{ADDRESSES[0]}:{PORT}/ok/")
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def wait_for(url: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the origin did not answer at {url}")


# -- throughput -------------------------------------------------------------------------------


def fetcher_env(db: Path, **variables: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHER_")}
    env |= {"FETCHER_DB": str(db), "FETCHER_ALLOW_PRIVATE": "true", "FETCHER_LOG_FORMAT": "json"}
    env |= {f"FETCHER_{k.upper()}": str(v) for k, v in variables.items()}
    return env


def timed(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> float:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=out, stderr=out, check=True)
    elapsed = time.perf_counter() - started
    if log:
        out.close()  # type: ignore[union-attr]
    return elapsed


def postgres_answering(url: str) -> str | None:
    """`url` (a server's maintenance database) if it answers; else None."""

    async def connect() -> None:
        connection = await asyncpg.connect(url, timeout=10)
        await connection.close()

    try:
        asyncio.run(connect())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None
    return url


def fresh_db(db: Path) -> Path:
    """`db` with no database file (nor its WAL) left by an earlier run."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


# where `fetcher run --drain` runs: "pinned" to core 1 (as the bare loops); "free" on any core
# (--daemon-free); "apart", the event loop on core 1 and every other thread on core 0
# (--helpers-apart)
PLACEMENT = "pinned"


def timed_apart(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """`timed`, the process on core 1 and each thread but its first (the event loop) moved to
    core 0 as soon as it appears (polled every 10 ms)."""
    with open(log, "ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen([*pinned(1), *cmd], env=env, stdout=out, stderr=out)
        moved: set[int] = set()
        try:
            while proc.poll() is None:
                with contextlib.suppress(OSError):
                    for tid in map(int, os.listdir(f"/proc/{proc.pid}/task")):
                        if tid != proc.pid and tid not in moved:
                            with contextlib.suppress(OSError):
                                os.sched_setaffinity(tid, {0})
                                moved.add(tid)
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return elapsed


def run_fetcher(
    urls: Path, concurrency: int, workdir: Path, jobs_file: Path | None = None, **variables: object
) -> float:
    """`fetcher run --drain` of `urls` (or of the job objects of `jobs_file`, as many)."""
    db = fresh_db(workdir / "bench.db")
    shutil.rmtree(workdir / "bodies", ignore_errors=True)
    env = fetcher_env(
        db, max_concurrency=concurrency, host_concurrency=concurrency, host_rate=0, **variables
    )
    fetcher = [sys.executable, "-m", "fetcher"]
    submitted = str(jobs_file or urls)
    subprocess.run([*fetcher, "submit", "-f", submitted], env=env, check=True, capture_output=True)
    drain, log = [*fetcher, "run", "--drain"], workdir / "fetcher.log"
    if PLACEMENT == "apart":
        elapsed = timed_apart(drain, env, log)
    else:
        elapsed = timed([*(pinned(1) if PLACEMENT == "pinned" else []), *drain], env, log)
    done = stats.status(open_reader(db))["done"]
    if done != count_lines(urls):
        raise RuntimeError(f"fetcher finished {done} of {count_lines(urls)} jobs")
    return elapsed


def timed_client(cmd: list[str], urls: Path) -> float:
    """Run a baseline client; it prints how many 200s it got, which must be every URL."""
    started = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - started
    got, wanted = int(result.stdout.split()[-1]), count_lines(urls)
    if got != wanted:
        raise RuntimeError(f"{cmd[-3:]} got {got} answers of {wanted}")
    return elapsed


def run_bare(transport: str) -> Callable[[Path, int, Path], float]:
    def run(urls: Path, concurrency: int, workdir: Path) -> float:
        script = str(HERE / "bare.py")
        cmd = [*pinned(1), sys.executable, script, transport, str(concurrency), str(urls)]
        return timed_client(cmd, urls)

    return run


def run_scrapy(urls: Path, concurrency: int, workdir: Path) -> float:
    script = str(HERE / "scrapy_spider.py")
    return timed_client([*pinned(1), sys.executable, script, str(concurrency), str(urls)], urls)


def count_lines(path: Path) -> int:
    with path.open() as f:
        return sum(1 for _ in f)


def throughput(workdir: Path, n: int, concurrency: int, reps: int) -> list[str]:
    clients: dict[str, Callable[[Path, int, Path], float]] = {
        "fetcher run --drain": run_fetcher,  # robots.txt obeyed (a 404 here), as by default
        "fetcher, FETCHER_ROBOTS=ignore": functools.partial(run_fetcher, robots="ignore"),
        "bare httpx (default transport)": run_bare("default"),
        "bare aiohttp loop": run_bare("aiohttp"),
        "bare httpx over fetcher's transport": run_bare("fetcher"),
    }
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        clients["bare httpx over httpx-aiohttp"] = run_bare("httpx-aiohttp")
    if importlib.util.find_spec("scrapy") is not None:
        clients["Scrapy"] = run_scrapy
    lines = [
        f"### Throughput: {n:,} URLs, C={concurrency}, 1 kB answers, median of {reps}",
        "",
        "| hosts | client | req/s (median) | runs | fetcher ÷ client |",
        "|---|---|---|---|---|",
    ]
    for hosts in (1, 16):
        urls = workdir / f"urls-{hosts}.txt"
        urls.write_text("".join(f"http://{ADDRESSES[i % hosts]}:{PORT}/{i}\n" for i in range(n)))
        lines += compare(clients, urls, concurrency, reps, workdir, str(hosts))
    return lines


def compare(
    clients: dict[str, Callable[[Path, int, Path], float]],
    urls: Path,
    concurrency: int,
    reps: int,
    workdir: Path,
    label: str,
) -> list[str]:
    """Interleaved runs of each client; a table row each: median req/s, every run, and the
    ratio of the first client (fetcher) to it."""
    n = count_lines(urls)
    rates: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(reps):  # interleaved: machine noise falls on every client alike
        for name, run in clients.items():
            rates[name].append(n / run(urls, concurrency, workdir))
    ours = statistics.median(next(iter(rates.values())))
    rows = []
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        rows.append(f"| {label} | {name} | {median:,.0f} | {runs} | {ours / median:.2f} |")
    print("\n".join(rows), flush=True)
    return rows


def requests_with_bodies(workdir: Path, n: int, concurrency: int, reps: int) -> list[str]:
    """Does a job with headers and a body cost more per request than a bare GET? fetcher's
    ratio to the bare aiohttp loop, each sending the same requests, for both."""
    from bare import POST_BODY, POST_HEADERS

    urls = workdir / "urls-get.txt"
    urls.write_text("".join(f"http://{ADDRESSES[0]}:{PORT}/r{i}\n" for i in range(n)))
    jobs = workdir / "jobs-post.jsonl"
    body = POST_BODY.decode()
    jobs.write_text(
        "".join(
            json.dumps({"url": f"http://{ADDRESSES[0]}:{PORT}/r{i}", "method": "POST",
                        "body": body, "headers": POST_HEADERS}) + "\n"
            for i in range(n)
        )
    )  # fmt: skip

    def bare_post(urls: Path, concurrency: int, workdir: Path) -> float:
        script = str(HERE / "bare.py")
        cmd = [*pinned(1), sys.executable, script, "aiohttp", str(concurrency), str(urls), "--post"]
        return timed_client(cmd, urls)

    get = compare(
        {"fetcher, GET": run_fetcher, "bare aiohttp loop, GET": run_bare("aiohttp")},
        urls, concurrency, reps, workdir, "GET",
    )  # fmt: skip
    post = compare(
        {"fetcher, POST 1 kB + 3 headers": functools.partial(run_fetcher, jobs_file=jobs),
         "bare aiohttp loop, the same POST": bare_post},
        urls, concurrency, reps, workdir, "POST",
    )  # fmt: skip
    return [
        f"### Jobs that are requests: {n:,} jobs, one host, C={concurrency}, median of {reps}",
        "",
        "| request | client | req/s (median) | runs | fetcher ÷ client |",
        "|---|---|---|---|---|",
        *get,
        *post,
    ]


def kept_bodies(workdir: Path, smoke: bool, concurrency: int, reps: int) -> list[str]:
    """Distinct answers of 1 kB, 100 kB and 1 MB, bodies kept (WARC), at 1 and 16 hosts,
    against the bare aiohttp loop reading the same; at 100 kB also with .warc.gz and with no
    body kept."""
    lines = [
        f"### Kept bodies (WARC), distinct answers, C={concurrency}, median of {reps}",
        "",
        "| answers | client | req/s (median) | runs | fetcher ÷ client |",
        "|---|---|---|---|---|",
    ]
    for name in SIZES:
        n = 200 if smoke else (1_000 if name == "1m" else 5_000)
        for hosts in (1, 16):
            urls = workdir / f"urls-{name}-{hosts}.txt"
            urls.write_text(
                "".join(f"http://{ADDRESSES[i % hosts]}:{PORT}/{name}/{i}\n" for i in range(n))
            )
            clients: dict[str, Callable[[Path, int, Path], float]] = {
                "fetcher, bodies kept (.warc)": run_fetcher,
                "bare aiohttp loop": run_bare("aiohttp"),
            }
            if name == "100k" and hosts == 1:
                clients["fetcher, FETCHER_WARC_GZIP=true"] = functools.partial(
                    run_fetcher, warc_gzip=True
                )
                clients["fetcher, FETCHER_SAVE_BODIES=false"] = functools.partial(
                    run_fetcher, save_bodies=False
                )
            label = f"{name}, {hosts} host{'s' if hosts > 1 else ''}, {n:,} URLs"
            lines += compare(clients, urls, concurrency, reps, workdir, label)
    return lines


POLITE_PORT = 18082


class PoliteRun(NamedTuple):
    urls: int
    hosts: int
    wall_s: float
    ideal_s: float
    latency_ms: float  # mean over the daemon's job lines: the origin's answer, connects included
    done: int


def polite_run(workdir: Path, smoke: bool) -> PoliteRun:
    """Every host at 2/s with 4 in flight, 64 slots in all, answers in 50 ms: the feeder's
    and the scheduler's own efficiency, against the ideal 64 / 0.05 s = 1,280 req/s. The
    daemon (and the origin) are whatever fetcher PYTHONPATH points at."""
    hosts, per_host = (200, 5) if smoke else (2_000, 5)
    keys = [f"127.0.{1 + h // 250}.{1 + h % 250}:{POLITE_PORT}" for h in range(hosts)]
    lines = [f"http://{key}/slow/50/{key}/{i}\n" for i in range(per_host) for key in keys]
    urls = workdir / "urls-polite.txt"
    urls.write_text("".join(lines))
    code = (
        "import time; from fetcher.demo import Origin; "
        f"o = Origin(['0.0.0.0'], {POLITE_PORT}).start(); time.sleep(86400)"
    )
    origin = subprocess.Popen([*pinned(0), sys.executable, "-c", code])
    log = workdir / "polite.log"
    log.unlink(missing_ok=True)
    try:
        wait_for(f"http://127.0.1.1:{POLITE_PORT}/ok/")
        db = fresh_db(workdir / "polite.db")
        env = fetcher_env(db, host_rate=2, host_burst=1, host_concurrency=4, max_concurrency=64)
        fetcher = [sys.executable, "-m", "fetcher"]
        subprocess.run(
            [*fetcher, "submit", "-f", str(urls)], env=env, check=True, capture_output=True
        )
        wall = timed([*pinned(1), *fetcher, "run", "--drain"], env, log)
        done = stats.status(open_reader(db))["done"]
    finally:
        origin.terminate()
        origin.wait(10)
    latencies = [
        event["latency_ms"]
        for event in map(json.loads, filter(lambda line: line.startswith("{"), log.open()))
        if event["event"] == "job.done"
    ]
    ideal = max(len(lines) / (64 / 0.05), (per_host - 1) / 2 + 0.05)  # slots', or a host's rate
    return PoliteRun(len(lines), hosts, wall, ideal, statistics.fmean(latencies), done)


def many_polite_hosts(workdir: Path, smoke: bool) -> list[str]:
    run = polite_run(workdir, smoke)
    row = (
        f"- Many polite hosts: {run.urls:,} URLs over {run.hosts:,} host keys, 5 a host at"
        f" 2/s, burst 1, 4 in flight, C=64, answers in 50 ms: `run --drain` {run.wall_s:.1f} s,"
        f" ideal {run.ideal_s:.1f} s ({100 * (run.wall_s / run.ideal_s - 1):+.0f} %); mean"
        f" latency {run.latency_ms:.1f} ms; {run.done:,} of {run.urls:,} done."
    )
    print(row, flush=True)
    return ["### Many polite hosts", "", row]


# -- politeness -------------------------------------------------------------------------------


def submit_and_drain(urls: str, env: dict[str, str], log: Path) -> float:
    """Submit `urls` (one a line), then time `fetcher run --drain` on them."""
    fetcher = [sys.executable, "-m", "fetcher"]
    subprocess.run(
        [*fetcher, "submit", "-f", "-"],
        input=urls.encode(),
        env=env,
        check=True,
        capture_output=True,
    )
    return timed([*fetcher, "run", "--drain"], env, log)


def politeness(workdir: Path, smoke: bool) -> list[str]:
    lines = ["### Politeness", ""]
    n, rate = (40, 20) if smoke else (600, 20)
    with Origin(ADDRESSES[:12], 0) as origin:
        db = workdir / "rate.db"
        env = fetcher_env(db, host_rate=rate, host_burst=1, host_concurrency=8)
        urls = "\n".join(origin.url(f"ok/{i}") for i in range(n))
        submit_and_drain(urls, env, workdir / "rate.log")
        arrivals = sorted(origin.stats.arrivals[origin.host()])
        achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        worst = max(sum(1 for u in arrivals[i:] if u <= t + 1.0) for i, t in enumerate(arrivals))
        lines += [
            f"- Rate precision, one host at {rate}/s, burst 1, {n} URLs: achieved"
            f" {achieved:.2f}/s ({100 * (achieved / rate - 1):+.2f} %), worst one-second window"
            f" {worst} requests (limit rate + burst = {rate + 1}).",
        ]
        origin.reset_stats()
        db = workdir / "hol.db"
        per_host = 5 if smoke else 20
        env = fetcher_env(db, host_rate=2, host_burst=1, max_concurrency=4)
        urls = "\n".join(origin.url(f"ok/{i}", h) for h in range(11) for i in range(per_host))
        wall = submit_and_drain(urls, env, workdir / "hol.log")
        every = [t for ts in origin.stats.arrivals.values() for t in ts]
        ideal = (per_host - 1) / 2
        lines += [
            f"- Head-of-line: 11 hosts x {per_host} URLs at 2/s each, global cap 4: requests span"
            f" {max(every) - min(every):.2f} s (ideal {ideal:.1f} s), `run --drain` wall"
            f" {wall:.2f} s (process start and exit included).",
        ]
    print("\n".join(lines), flush=True)
    return lines


# -- scale ------------------------------------------------------------------------------------


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def scale(workdir: Path, smoke: bool, robots: str = "obey") -> list[str]:
    n, hosts = (20_000, 1_000) if smoke else (1_000_000, 10_000)
    urls = workdir / "scale.txt"
    with urls.open("w") as f:
        for i in range(n):
            h = i % hosts
            f.write(f"http://127.0.{h // 250}.{2 + h % 250}:{SCALE_PORT}/item/{i}\n")
    db = workdir / "scale.db"
    env = fetcher_env(db, max_concurrency=64, host_concurrency=4, host_rate=0, robots=robots)
    fetcher = [sys.executable, "-m", "fetcher"]
    submit_s = timed([*fetcher, "submit", "-f", str(urls)], env)
    lines = [
        f"### Scale (FETCHER_ROBOTS={robots})",
        "",
        f"- `fetcher submit -f` of {n:,} URLs over {hosts:,} hosts: {submit_s:.1f} s.",
    ]
    log = open(workdir / "scale.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([*pinned(1), *fetcher, "run"], env=env, stdout=log, stderr=log)
    reader = open_reader(db)
    marks: dict[int, int] = {}
    queries: list[tuple[float, float]] = []
    cli: list[float] = []
    peak_queued_rss = 0
    peak_files = 0  # open files, connections most of them: sampled every 0.5 s
    deadline = time.monotonic() + (60 if smoke else 360)
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            t0 = time.perf_counter()
            summary = stats.status(reader)
            t1 = time.perf_counter()
            stats.host_stats(reader)
            t2 = time.perf_counter()
            queries.append(((t1 - t0) * 1000, (t2 - t1) * 1000))
            if len(cli) < 5:
                cli.append(timed([*fetcher, "status", "--json"], env) * 1000)
            if summary["retrying"] or summary["failed"]:  # every request must be answered
                raise RuntimeError(f"the origin is not answering every request: {summary}")
            rss = rss_kb(daemon.pid)
            peak_files = max(peak_files, len(os.listdir(f"/proc/{daemon.pid}/fd")))
            if summary["done"] < 1000:
                peak_queued_rss = max(peak_queued_rss, rss)
            for mark in (10_000, 100_000, 200_000):
                if summary["done"] >= mark and mark not in marks:
                    marks[mark] = rss
            if 200_000 in marks or (smoke and summary["queued"] == 0):
                break
        hwm = rss_kb(daemon.pid, "VmHWM")
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
    status_ms = statistics.median(q[0] for q in queries)
    stats_ms = statistics.median(q[1] for q in queries)
    lines += [
        f"- Daemon RSS with the queue full (before 1,000 done): {peak_queued_rss / 1024:.0f} MB;"
        f" peak over the run (VmHWM): {hwm / 1024:.0f} MB.",
        "- RSS at "
        + ", ".join(f"{mark:,} done: {kb / 1024:.0f} MB" for mark, kb in sorted(marks.items()))
        + f"; most open files seen: {peak_files:,}.",
        f"- While the daemon runs: status query {status_ms:.1f} ms, stats query ({hosts:,} hosts)"
        f" {stats_ms:.1f} ms (medians of {len(queries)}); whole `fetcher status --json` process"
        f" {statistics.median(cli):.0f} ms (median of {len(cli)}).",
    ]
    print("\n".join(lines), flush=True)
    return lines


# -- main -------------------------------------------------------------------------------------


def machine() -> list[str]:
    versions = []
    for package in ("httpx", "httpx-aiohttp", "aiohttp", "aiosqlite", "structlog", "scrapy"):
        try:
            from importlib.metadata import version

            versions.append(f"{package} {version(package)}")
        except Exception:  # noqa: S112 - an optional package that is not installed
            continue
    return [
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python"
        f" {platform.python_version()}, SQLite {sqlite3.sqlite_version}, fetcher {__version__}.",
        f"- Versions: {', '.join(versions)}.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run")
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale", action="store_true", help="also the million-job figures")
    parser.add_argument(
        "--only",
        choices=[
            "throughput",
            "requests",
            "bodies",
            "polite",
            "politeness",
            "scale",
            "api",
            "recurring",
            "growth",
        ],
    )
    parser.add_argument(
        "--robots", choices=["obey", "ignore"], default="obey",
        help="FETCHER_ROBOTS for the scale run (obey, the default, asks each host's robots.txt)",
    )  # fmt: skip
    parser.add_argument(
        "--postgres", default="postgresql://127.0.0.1:5432/postgres",
        help="the PostgreSQL server for the growth section (its maintenance database); skipped"
        " if it does not answer",
    )  # fmt: skip
    placement = parser.add_mutually_exclusive_group()
    placement.add_argument(
        "--daemon-free", dest="placement", action="store_const", const="free",
        help="fetcher's drains not pinned: its threads (the WARC writer's, SQLite's) may use core"
        " 0 beside the origin; the bare loops stay on core 1",
    )  # fmt: skip
    placement.add_argument(
        "--helpers-apart", dest="placement", action="store_const", const="apart",
        help="fetcher's event loop on core 1 as the bare loops, its other threads (the WARC"
        " writer's, SQLite's) moved to core 0 beside the origin: a machine with a core to spare",
    )  # fmt: skip
    args = parser.parse_args()
    global PLACEMENT
    PLACEMENT = args.placement or "pinned"
    if args.smoke:
        args.urls, args.reps = 500, 1
    compiled(HERE.parent / "src")
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-bench-"))
    report = ["## `" + " ".join(["make bench", *sys.argv[1:]]) + "`", "", *machine()]
    use_nginx = Nginx.available()
    origin_name = "nginx" if use_nginx else "the demo origin (nginx could not be installed)"
    report.append(f"- Origin: {origin_name}, on core 0; clients on core 1.")
    print("\n".join(report), flush=True)
    with_scale = args.only == "scale" or (args.scale and args.only is None)
    with_recurring = args.only in (None, "recurring") and use_nginx  # 1,000 hosts: the wildcard
    origin = Nginx(workdir, with_scale or with_recurring) if use_nginx else FallbackOrigin()
    with origin:
        if args.only in (None, "throughput"):
            report += ["", *throughput(workdir, args.urls, args.concurrency, args.reps)]
        if args.only in (None, "requests"):
            report += ["", *requests_with_bodies(workdir, args.urls, args.concurrency, args.reps)]
        if args.only in (None, "api"):
            from api import api_figures

            report += ["", *api_figures(workdir, args.smoke, args.reps, args.concurrency)]
        if args.only in (None, "bodies") and use_nginx:
            report += ["", *kept_bodies(workdir, args.smoke, args.concurrency, args.reps)]
        if with_recurring:
            from recurring import recurring_figures

            report += ["", *recurring_figures(workdir, args.smoke, args.reps)]
        if with_scale:
            if not use_nginx:
                raise SystemExit("the scale run needs nginx (the wildcard address)")
            report += ["", *scale(workdir, args.smoke, args.robots)]
    if args.only in (None, "growth"):
        from store_sql import growth_figures

        report += ["", *growth_figures(args.smoke, args.reps, postgres_answering(args.postgres))]
    if args.only in (None, "polite"):
        report += ["", *many_polite_hosts(workdir, args.smoke)]
    if args.only in (None, "politeness"):
        report += ["", *politeness(workdir, args.smoke)]
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text("\n".join(report) + "\n")
    print(f"\n(written to {out / 'latest.md'}; work files in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
