"""What keeping a body costs on this machine's disk, without fetcher: the steps BodyStore
takes for a new body held in memory (a temporary file, the write, a rename into place), for N
bodies of a given size in a fresh directory beside the default database. Prints µs a body.

    taskset -c 1 .venv/bin/python bench/body_write.py --size 102400
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100 * 1024)
    parser.add_argument("--bodies", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default="var", help="where to write (default: ./var)")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    data = os.urandom(args.size)
    runs = []
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory(dir=args.dir) as root:
            tmp = os.path.join(root, "tmp")
            os.mkdir(tmp)
            started = time.perf_counter()
            for i in range(args.bodies):
                fd, spilled = tempfile.mkstemp(dir=tmp)
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(spilled, os.path.join(root, str(i)))
            runs.append((time.perf_counter() - started) / args.bodies * 1e6)
    every = ", ".join(f"{v:.0f}" for v in runs)
    print(
        f"{args.size:,} B a body: {statistics.median(runs):.0f} µs (median of {args.reps}; {every})"
    )


if __name__ == "__main__":
    main()
