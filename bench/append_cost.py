"""What appending a 100 kB body to a file costs here: 20,000 appends (2 GB) of seven pieces with
one writev each, µs of CPU a body. Run it several times in a row: on this machine (a virtual
one) the first run after memory was last used for something else pays for the page cache's new
pages, the next ones reuse the pages the previous run's file gave back.

    for i in 1 2 3; do taskset -c 1 .venv/bin/python bench/append_cost.py; done
"""

from __future__ import annotations

import os
import tempfile
import time

PIECES = [os.urandom(16384) for _ in range(6)] + [os.urandom(4000)]
N = 20_000


def main() -> None:
    with tempfile.NamedTemporaryFile() as file:
        fd = os.open(file.name, os.O_WRONLY | os.O_APPEND)
        before, started = os.times(), time.perf_counter()
        for _ in range(N):
            os.writev(fd, PIECES)
        after, wall = os.times(), time.perf_counter() - started
        os.close(fd)
    cpu = (after.user + after.system) - (before.user + before.system)
    print(f"{cpu / N * 1e6:.0f} µs CPU, {wall / N * 1e6:.0f} µs wall a 100 kB append")


if __name__ == "__main__":
    main()
