"""What a queued job costs SQLite in `fetcher submit`: µs per inserted row on fetcher's real
schema, and the same with one part taken away at a time, to see which part a faster submit
would have to change. Plain sqlite3, chunks of 100,000 in a transaction each, rows sorted by
host as `Store.submit` sorts them, inserted as it inserts them (one statement over a JSON
array), and, for comparison, with executemany (a statement step per row, as it did before);
median over repetitions.

    .venv/bin/python bench/insert_cost.py            # 300,000 rows over 10,000 hosts
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from fetcher.sqlite import schema

VARIANTS: dict[str, tuple[list[str], list[str]]] = {  # name: (statements after migrate, pragmas)
    "the schema as it is": ([], []),
    "the schema as it is, rows by executemany": ([], []),
    "without the unique active-URL index": (["DROP INDEX jobs_active_url"], []),
    "without the lease and retry indexes": (["DROP INDEX jobs_due", "DROP INDEX jobs_lease"], []),
    "with a 128 MiB page cache": ([], ["PRAGMA cache_size = -131072"]),
    "with synchronous=OFF (unsafe on power loss)": ([], ["PRAGMA synchronous = OFF"]),
}


def per_row_us(path: Path, rows: list[tuple[str, str, float, float]], variant: str) -> float:
    statements, pragmas = VARIANTS[variant]
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(schema.connect_pragmas(32))  # as `fetcher submit` opens it
    schema.migrate(db)
    for statement in [*pragmas, *statements]:
        db.execute(statement)
    started = time.perf_counter()
    for i in range(0, len(rows), 100_000):
        chunk = rows[i : i + 100_000]
        db.execute("BEGIN IMMEDIATE")
        if "executemany" in variant:
            db.executemany(
                "INSERT INTO jobs (url, host, state, created_at, updated_at)"
                " VALUES (?, ?, 'queued', ?, ?) ON CONFLICT DO NOTHING",
                chunk,
            )
        else:
            db.execute(
                "INSERT INTO jobs (url, host, state, created_at, updated_at)"
                " SELECT json_extract(v.value, '$[0]'), json_extract(v.value, '$[1]'), 'queued',"
                " ?, ? FROM json_each(?) AS v WHERE true ON CONFLICT DO NOTHING",
                (1.0, 1.0, orjson.dumps([row[:2] for row in chunk]).decode()),
            )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for i in range(args.rows):  # the URLs of `make bench --only scale`
        h = i % args.hosts
        host = f"127.0.{h // 250}.{2 + h % 250}:18081"
        rows.append((f"http://{host}/item/{i}", host, 1.0, 1.0))
    rows.sort(key=lambda row: row[1])
    runs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):  # interleaved
            for n, variant in enumerate(VARIANTS):
                runs[variant].append(per_row_us(Path(tmp) / f"{rep}-{n}.db", rows, variant))
    print(f"{args.rows:,} rows over {args.hosts:,} hosts, median of {args.reps}:")
    for variant, values in runs.items():
        print(f"  {statistics.median(values):5.2f} µs a row  {variant}")


if __name__ == "__main__":
    main()
