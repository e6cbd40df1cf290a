"""Where the daemon's CPU goes, thread by thread: `fetcher run --drain` of distinct answers
(nginx, one host, C=64, pinned to core 1 as in `make bench`) under `perf record` (software
clock, call graphs), then per thread the µs of CPU a request in each library, and the kernel's
share by system call (and page faults). Python frames are not named (CPython 3.11 gives perf
no map): libpython is "the interpreter". Needs Debian's linux-perf.

    .venv/bin/python bench/perf_split.py --path 100k/ --urls 5000
    .venv/bin/python bench/perf_split.py --path 1m/ --urls 1000 --set save_bodies=false

Threads are named by what they do: the event loop (the process's first thread), the WARC
writer (writes with writev), SQLite's (aiosqlite's, in libsqlite3). perf's own overhead makes
every figure larger than without it; compare them with each other, not with `make bench`.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

from run import ADDRESSES, PORT, Nginx, fetcher_env, fresh_db, pinned

FREQUENCY = 4999
LIBRARIES = {  # a piece of the library's file name -> what it is
    "libpython": "the interpreter",
    "kernel": "the kernel",
    "libcrypto": "OpenSSL (sha256)",
    "libsqlite3": "SQLite",
    "libc.so": "libc (memcpy, malloc)",
}


def record(workdir: Path, urls: Path, variables: dict[str, str]) -> Path:
    db = fresh_db(workdir / "perf.db")
    env = fetcher_env(db, max_concurrency=64, host_concurrency=64, host_rate=0, **variables)
    env["FETCHER_BODY_DIR"] = str(workdir / "bodies")
    fetcher = [sys.executable, "-m", "fetcher"]
    subprocess.run([*fetcher, "submit", "-f", str(urls)], env=env, check=True, capture_output=True)
    data = workdir / "perf.data"
    perf = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY), "-g", "-o", str(data)]
    with (workdir / "daemon.log").open("wb") as log:
        subprocess.run(
            [*perf, "--", *pinned(1), *fetcher, "run", "--drain"],
            env=env, stdout=log, stderr=log, check=True,
        )  # fmt: skip
    return data


def samples(data: Path) -> list[tuple[int, int, list[tuple[str, str]]]]:
    """(pid, tid, frames leaf first as (symbol, library)) for each sample."""
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    found: list[tuple[int, int, list[tuple[str, str]]]] = []
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines:
            continue
        pid, _, tid = lines[0].split()[0].partition("/")
        frames = []
        for line in lines[1:]:
            parts = line.split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            symbol, _, library = rest.rpartition(" (")
            frames.append((symbol, library.rstrip(")")))
        found.append((int(pid), int(tid), frames))
    return found


def library_of(frames: list[tuple[str, str]]) -> str:
    library = frames[0][1] if frames else "?"
    return next((what for piece, what in LIBRARIES.items() if piece in library), "other")


def kernel_entry(frames: list[tuple[str, str]]) -> str | None:
    """The system call a kernel sample is in (the frame under do_syscall_64), or a fault."""
    symbols = [symbol for symbol, _ in frames]
    if "do_syscall_64" in symbols:
        at = symbols.index("do_syscall_64")
        return symbols[at - 1] if at else None
    return "page fault" if "asm_exc_page_fault" in symbols else None


def report(found: list[tuple[int, int, list[tuple[str, str]]]], requests: int) -> None:
    per_request = 1e6 / FREQUENCY / requests  # µs of CPU one sample stands for, a request
    threads: dict[int, list[list[tuple[str, str]]]] = collections.defaultdict(list)
    pids = collections.Counter(pid for pid, _, _ in found)
    daemon = pids.most_common(1)[0][0]
    for pid, tid, frames in found:
        if pid == daemon:
            threads[tid].append(frames)
    total = sum(len(stacks) for stacks in threads.values())
    print(f"{requests:,} requests, {total * per_request:,.0f} µs of CPU a request in all (perf on)")
    for tid, stacks in sorted(threads.items(), key=lambda item: -len(item[1])):
        libraries = collections.Counter(library_of(frames) for frames in stacks)
        calls = collections.Counter(
            entry for frames in stacks if (entry := kernel_entry(frames)) is not None
        )
        if tid == daemon:
            name = "event loop"
        elif any(symbol == "do_writev" for frames in stacks for symbol, _ in frames):
            name = "WARC writer"
        elif libraries["SQLite"]:
            name = "SQLite"
        else:
            name = f"thread {tid}"
        print(f"\n{name}: {len(stacks) * per_request:,.0f} µs a request")
        for what, count in libraries.most_common():
            print(f"  {what:24} {count * per_request:7,.1f} µs")
        for call, count in calls.most_common(6):
            print(f"    kernel: {call:30} {count * per_request:7,.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="100k/", help="100k/, 1k/ or 1m/ (make bench's answers)")
    parser.add_argument("--urls", type=int, default=5_000)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a FETCHER_ variable, e.g. save_bodies=false",
    )  # fmt: skip
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-perf-"))
    urls = workdir / "urls.txt"
    urls.write_text(
        "".join(f"http://{ADDRESSES[0]}:{PORT}/{args.path}{i}\n" for i in range(args.urls))
    )
    variables = dict(setting.split("=", 1) for setting in args.set)
    with Nginx(workdir, scale=False):
        data = record(workdir, urls, variables)
    report(samples(data), args.urls)


if __name__ == "__main__":
    main()
