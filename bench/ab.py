"""A/B of fetcher's own code between git revisions: `fetcher run --drain` on the same URLs
against the same nginx, runs interleaved, each revision's `src/` (from `git archive`) put
first on PYTHONPATH. Prints, per revision, the medians of requests/s (URLs / wall time of the
process), CPU time per request (user + system of the process), and the time from the last
`job.*` log line to `service.stopped` (how long a drain takes to end).

    .venv/bin/python bench/ab.py e49b9b3 HEAD            # 20,000 URLs, 1 host, 5 runs each
    .venv/bin/python bench/ab.py feec5a2~1 feec5a2 --reps 7
    .venv/bin/python bench/ab.py 21df644 HEAD --path 100k/ --urls 5000 --set save_bodies=false

With --submit N, it times `fetcher submit -f` of N URLs over 10,000 hosts into a fresh
database instead (the URLs of `make bench --only scale`; no origin needed):

    .venv/bin/python bench/ab.py HEAD~1 HEAD --submit 1000000 --reps 3

With --polite, it runs `make bench`'s many-polite-hosts case (2,000 hosts at 2/s) instead:

    .venv/bin/python bench/ab.py 8ecf51e HEAD --polite --reps 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from run import ADDRESSES, PORT, Nginx, compiled, fetcher_env, fresh_db, pinned, polite_run


def checkout(rev: str, into: Path) -> Path:
    """The revision's src/ under `into`; returns the directory to put on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", rev, "src"], check=True, capture_output=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return compiled(into / "src")


def tail_s(log: Path) -> float:
    """Seconds from the last job line to `service.stopped`, from the JSON log."""
    stamps: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            kind = "job" if event["event"].startswith("job.") else event["event"]
            at = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            stamps[kind] = at.timestamp()
    return stamps["service.stopped"] - stamps["job"]


def one_run(
    src: Path, urls: Path, n: int, workdir: Path, variables: dict[str, str]
) -> tuple[float, float, float, float]:
    db = fresh_db(workdir / "ab.db")
    shutil.rmtree(workdir / "bodies", ignore_errors=True)
    env = fetcher_env(db, max_concurrency=64, host_concurrency=64, host_rate=0, **variables)
    env["PYTHONPATH"] = str(src)
    fetcher = [sys.executable, "-m", "fetcher"]
    subprocess.run([*fetcher, "submit", "-f", str(urls)], env=env, check=True, capture_output=True)
    log = workdir / "ab.log"
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    before, started = os.times(), time.perf_counter()
    with log.open("wb") as out:
        subprocess.run([*pinned(1), *fetcher, "run", "--drain"], env=env, stdout=out, stderr=out)
    wall, after = time.perf_counter() - started, os.times()
    cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults
    return n / wall, cpu / n * 1e6, tail_s(log), faults / n


def one_submit(src: Path, urls: Path, workdir: Path) -> float:
    db = fresh_db(workdir / "submit.db")
    env = fetcher_env(db)
    env["PYTHONPATH"] = str(src)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fetcher", "submit", "-f", str(urls)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def compare_submits(
    srcs: dict[str, Path], n: int, reps: int, workdir: Path, json_lines: bool
) -> None:
    urls = workdir / "scale.txt"
    with urls.open("w") as f:
        for i in range(n):
            h = i % 10_000
            url = f"http://127.0.{h // 250}.{2 + h % 250}:18081/item/{i}"
            if json_lines:  # as BENCHMARKS.md's JSON lines figure was made
                f.write(json.dumps({"url": url, "priority": i % 7, "metadata": {"n": i}}) + "\n")
            else:
                f.write(url + "\n")
    runs: dict[str, list[float]] = {rev: [] for rev in srcs}
    for _ in range(reps):
        for rev, src in srcs.items():
            runs[rev].append(one_submit(src, urls, workdir))
    what = "JSON lines" if json_lines else "URLs"
    print(f"fetcher submit of {n:,} {what} over 10,000 hosts, medians of {reps} interleaved runs")
    for rev, values in runs.items():
        every = ", ".join(f"{v:.2f}" for v in values)
        print(f"{rev:>12}  {statistics.median(values):6.2f} s   (runs: {every})")


def compare_polite(srcs: dict[str, Path], reps: int, workdir: Path) -> None:
    runs: dict[str, list[tuple[float, float]]] = {rev: [] for rev in srcs}
    for _ in range(reps):
        for rev, src in srcs.items():
            os.environ["PYTHONPATH"] = str(src)  # the daemon's and the origin's
            run = polite_run(workdir, smoke=False)
            if run.done != run.urls:
                raise RuntimeError(f"{rev}: {run.done} of {run.urls} jobs done")
            runs[rev].append((run.wall_s, run.latency_ms))
    print(f"10,000 URLs over 2,000 hosts at 2/s, C=64, medians of {reps} interleaved runs")
    for rev, values in runs.items():
        wall, latency = (statistics.median(v) for v in zip(*values, strict=True))
        every = ", ".join(f"{v[0]:.1f}" for v in values)
        print(f"{rev:>12}  {wall:5.1f} s  mean latency {latency:5.1f} ms   (s: {every})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", help="git revisions to compare")
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--submit", type=int, metavar="N", help="time submits of N URLs instead")
    parser.add_argument("--json", action="store_true", help="with --submit: JSON lines")
    parser.add_argument("--polite", action="store_true", help="the many-polite-hosts case")
    parser.add_argument(
        "--path", default="", help="URL path prefix: 100k/ for distinct 100 kB answers, 1k/, 1m/"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a FETCHER_ variable for every run, e.g. save_bodies=false",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-ab-"))
    srcs = {rev: checkout(rev, workdir / f"rev{i}") for i, rev in enumerate(args.revs)}
    if args.submit:
        compare_submits(srcs, args.submit, args.reps, workdir, args.json)
        return
    if args.polite:
        compare_polite(srcs, args.reps, workdir)
        return
    urls = workdir / "urls.txt"
    urls.write_text(
        "".join(f"http://{ADDRESSES[0]}:{PORT}/{args.path}{i}\n" for i in range(args.urls))
    )
    variables = dict(setting.split("=", 1) for setting in args.set)
    runs: dict[str, list[tuple[float, float, float, float]]] = {rev: [] for rev in args.revs}
    with Nginx(workdir, scale=False):
        for _ in range(args.reps):
            for rev, src in srcs.items():
                runs[rev].append(one_run(src, urls, args.urls, workdir, variables))
    answers = f"/{args.path}… answers" if args.path else "1 kB answers"
    settings = "".join(f", FETCHER_{k.upper()}={v}" for k, v in variables.items())
    print(
        f"{args.urls:,} URLs, {answers}, 1 host, C=64{settings},"
        f" medians of {args.reps} interleaved runs"
    )
    for rev, values in runs.items():
        rate, cpu, tail, faults = (statistics.median(v) for v in zip(*values, strict=True))
        every = ", ".join(f"{v[0]:,.0f}" for v in values)
        print(
            f"{rev:>12}  {rate:7,.0f} req/s  {cpu:5.0f} µs CPU a request  {faults:4.1f} page"
            f" faults a request  {tail:5.3f} s last job → stopped   (req/s: {every})"
        )


if __name__ == "__main__":
    main()
