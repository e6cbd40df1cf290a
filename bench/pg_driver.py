"""Which async PostgreSQL driver: asyncpg against psycopg 3, on the statements the queue runs.

    .venv/bin/python bench/pg_driver.py [--dsn postgresql://127.0.0.1/test] [--rounds 5]

Each driver, in turn and in the same run: a round trip (SELECT 1), a batch claim (an UPDATE …
RETURNING 200 rows from arrays of parameters), and a batch record (an UPDATE from unnest of
200 (id, state) pairs). Medians of `--rounds` rounds, in µs per statement.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import asyncpg
import psycopg

SETUP = """
DROP TABLE IF EXISTS driver_bench;
CREATE TABLE driver_bench (id bigint PRIMARY KEY, host text NOT NULL, state text NOT NULL,
                           owner text);
INSERT INTO driver_bench SELECT i, 'h' || (i % 50), 'queued', NULL FROM generate_series(1, 20000) i;
"""
CLAIM = (
    "UPDATE driver_bench SET state = 'running', owner = $1 WHERE id = ANY($2::bigint[])"
    " RETURNING id, host, state"
)
RECORD = (
    "UPDATE driver_bench SET state = v.state, owner = NULL"
    " FROM unnest($1::bigint[], $2::text[]) AS v(id, state) WHERE driver_bench.id = v.id"
)
N = 500


async def timed(step: Callable[[], Awaitable[object]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await step()
    return (time.perf_counter() - start) / n * 1e6


async def with_asyncpg(dsn: str) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    ids = list(range(1, 201))
    states = ["done"] * 200
    try:
        return {
            "round trip": await timed(lambda: conn.fetchval("SELECT 1"), N),
            "claim 200": await timed(lambda: conn.fetch(CLAIM, "me", ids), N // 5),
            "record 200": await timed(lambda: conn.execute(RECORD, ids, states), N // 5),
        }
    finally:
        await conn.close()


async def with_psycopg(dsn: str) -> dict[str, float]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=0)
    ids = list(range(1, 201))
    states = ["done"] * 200
    claim, record = CLAIM.replace("$1", "%s").replace("$2", "%s"), RECORD.replace("$1", "%s")
    record = record.replace("$2", "%s")

    async def fetch(sql: str, *args: object) -> object:
        cursor = await conn.execute(sql, args)
        return await cursor.fetchall() if cursor.description else None

    try:
        return {
            "round trip": await timed(lambda: fetch("SELECT 1"), N),
            "claim 200": await timed(lambda: fetch(claim, "me", ids), N // 5),
            "record 200": await timed(lambda: fetch(record, ids, states), N // 5),
        }
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default="postgresql://127.0.0.1/test")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    conn = await asyncpg.connect(args.dsn)
    await conn.execute(SETUP)
    await conn.close()
    runs: dict[str, list[dict[str, float]]] = {"asyncpg": [], "psycopg": []}
    for _ in range(args.rounds):  # alternated, so both meet the same noise
        runs["asyncpg"].append(await with_asyncpg(args.dsn))
        runs["psycopg"].append(await with_psycopg(args.dsn))
    conn = await asyncpg.connect(args.dsn)
    await conn.execute("DROP TABLE driver_bench")
    await conn.close()
    print(f"{'µs per statement (median)':28} {'asyncpg':>10} {'psycopg 3':>10} {'ratio':>7}")
    for step in runs["asyncpg"][0]:
        a = statistics.median(r[step] for r in runs["asyncpg"])
        p = statistics.median(r[step] for r in runs["psycopg"])
        print(f"{step:28} {a:10.0f} {p:10.0f} {p / a:7.2f}")


if __name__ == "__main__":
    asyncio.run(main())
