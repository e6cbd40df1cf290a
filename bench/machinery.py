"""fetcher's own work per job, no network: the real Service (claims, scheduler, limits, a task
per job, the fetch wrapper, decoding, body hashing, logs at info, batched commits) over a
transport that answers every request with a canned 1 KiB 200 at once. Prints the median over
repetitions of CPU µs per job (user + system, both threads) and jobs/s, for
    direct     the transport takes the stored URL as it is (as fetcher's own transport does)
    request    the same answer from an httpx transport behind `HttpxTransport`: an
               httpx.Request per job (the tests' path, respx's)
What it leaves out is the HTTP client stack (bench/transport_floor.py measures that). Pin it
to one core, as `make bench` pins the daemon:

    taskset -c 1 .venv/bin/python bench/machinery.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from fetcher.bodies import BodyStore
from fetcher.config import Settings
from fetcher.daemon import build_service
from fetcher.fetch import Fetcher
from fetcher.log import configure_logging
from fetcher.model import JobRequest
from fetcher.sqlite.store import SqliteQueue as Store
from fetcher.transport import HttpxTransport, Request, Transport
from fetcher.urls import parse_url

BODY = b"x" * 1024


class CannedTransport:
    """fetcher's transport interface, answering at once: the stored URL as it is, the way
    fetcher's own transport takes it."""

    async def send(self, request: Request) -> httpx.Response:
        await asyncio.sleep(0)  # one turn of the loop, as a network answer takes at least
        return httpx.Response(
            200, headers=[(b"content-length", b"1024")], stream=httpx.ByteStream(BODY)
        )

    async def aclose(self) -> None:
        return None


class CannedHttpx(httpx.AsyncBaseTransport):
    """The same answer from an httpx transport, behind `HttpxTransport`: an httpx.Request per
    job (the tests' path)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await CannedTransport().send(Request("GET", str(request.url), ()))


TRANSPORTS: dict[str, Callable[[], Transport]] = {
    "direct": CannedTransport,
    "request": lambda: HttpxTransport(CannedHttpx()),
}


async def one_run(workdir: Path, path: str, n: int, hosts: int) -> tuple[float, float]:
    db = workdir / "machinery.db"  # a fresh directory per run
    store = await Store.open(db)
    await store.submit(
        [JobRequest(parse_url(f"http://h{i % hosts}.example/{i}")) for i in range(n)]
    )
    settings = Settings(
        db=db, allow_private=True, max_concurrency=64, host_concurrency=64, host_rate=0
    )
    bodies = BodyStore(workdir / "bodies")
    fetcher = Fetcher(settings, TRANSPORTS[path](), bodies)
    service = build_service(
        settings, store, fetcher, drain=True, bodies=bodies, install_signal_handlers=False
    )
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    summary = await service.run()
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    await store.close()
    if summary.done != n:
        raise RuntimeError(f"{summary.done} of {n} jobs done: {summary}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu / n * 1e6, n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {path: [] for path in TRANSPORTS}
    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory() as tmp:
        configure_logging("json", "info", sink)  # every job's line rendered, as in production
        for _ in range(args.reps):
            for path, values in runs.items():
                workdir = Path(tempfile.mkdtemp(dir=tmp))
                values.append(asyncio.run(one_run(workdir, path, args.jobs, args.hosts)))
    print(f"{args.jobs:,} jobs, {args.hosts} host(s), medians of {args.reps} interleaved runs")
    for path, values in runs.items():
        cpu, rate = (statistics.median(v) for v in zip(*values, strict=True))
        every = ", ".join(f"{c:.0f}" for c, _ in values)
        print(f"{path:>8}  {cpu:4.0f} µs CPU a job  {rate:7,.0f} jobs/s   (µs: {every})")


if __name__ == "__main__":
    main()
