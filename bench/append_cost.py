"""What appending a 100 kB body to a file costs here: 20,000 appends (2 GB) of seven pieces with
one writev each, µs of CPU a body, three ways, alternated for `--rounds` rounds:

    plain      the appends alone (the page cache keeps every page until memory runs short)
    sync       fdatasync after every 8 appends (as the WARC writer makes a batch durable)
    dontneed   the same, then posix_fadvise(DONTNEED) of the range just synced: its pages go
               back at once, and the next appends reuse them

On this machine (a virtual one) a page the page cache has not used before costs several
times one it reuses: `plain` and `sync` vary from run to run with how much of the memory they
meet is new; `dontneed` keeps reusing the same pages.

    taskset -c 1 .venv/bin/python bench/append_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

PIECES = [os.urandom(16384) for _ in range(6)] + [os.urandom(4000)]
N = 20_000
BATCH = 8


def append(mode: str) -> tuple[float, float]:
    """µs of CPU and of wall time an append, in `mode`."""
    with tempfile.NamedTemporaryFile() as file:
        fd = os.open(file.name, os.O_WRONLY | os.O_APPEND)
        synced = size = 0
        before, started = os.times(), time.perf_counter()
        for i in range(N):
            size += os.writev(fd, PIECES)
            if mode != "plain" and i % BATCH == BATCH - 1:
                os.fdatasync(fd)
                if mode == "dontneed":
                    os.posix_fadvise(fd, synced, size - synced, os.POSIX_FADV_DONTNEED)
                synced = size
        after, wall = os.times(), time.perf_counter() - started
        os.close(fd)
    cpu = (after.user + after.system) - (before.user + before.system)
    return cpu / N * 1e6, wall / N * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for round_ in range(1, args.rounds + 1):
        for mode in ("plain", "sync", "dontneed"):
            cpu, wall = append(mode)
            print(
                f"round {round_}  {mode:9} {cpu:5.0f} µs CPU, {wall:5.0f} µs wall a 100 kB append"
            )


if __name__ == "__main__":
    main()
