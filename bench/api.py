"""The HTTP API's figures (`make bench`, or `python bench/run.py --only api`):

server     aiohttp's server (what the daemon runs) against uvicorn + Starlette, serving the
           same JSON answers to the same client: requests/s at 16 keep-alive connections,
           server on core 0, client on core 1; interleaved, median of the runs.
submit     100,000 jobs through POST /v1/jobs in batches of 1,000 (one client, one
           connection), against `fetcher submit -f` of the same jobs (JSON lines), both into
           a running daemon's SQLite queue; the jobs wait for a far `not_before`, so the
           figure is the queue's intake and nothing else.
polling    `fetcher run --drain` of 20,000 URLs (16 hosts) with a client polling
           /v1/status and /v1/results 50 times a second all the while, against the same
           drain with the API on and nobody asking; the latency of those calls meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from run import ADDRESSES, PORT, fetcher_env, fresh_db, pinned

API_PORT = 18095


# -- the server: aiohttp against uvicorn ------------------------------------------------------

_STATUS = {"queued": 120, "retrying": 3, "running": 64, "done": 991_204, "failed": 12,
           "cancelled": 0, "requests_per_s": 1843.2, "oldest_queued_s": 0.4}  # fmt: skip
_PAGE = {"results": [{"id": i, "job_id": i, "run": 1, "cursor": i, "state": "done",
                      "url": f"http://127.0.0.2/{i}", "status": 200, "bytes": 1024,
                      "finished_at": "2026-12-04T12:00:00.000Z"} for i in range(100)],
         "next": 100}  # fmt: skip


def serve(kind: str, port: int) -> None:
    """One server process: `aiohttp` (AppRunner + TCPSite, as the daemon serves) or
    `uvicorn` (uvicorn.Server.serve() of a Starlette app, as an embedder would)."""
    import orjson

    status, page = orjson.dumps(_STATUS), orjson.dumps(_PAGE)
    if kind == "aiohttp":
        from aiohttp import web

        async def status_handler(request: web.Request) -> web.Response:
            return web.Response(body=status, content_type="application/json")

        async def page_handler(request: web.Request) -> web.Response:
            return web.Response(body=page, content_type="application/json")

        async def main() -> None:
            app = web.Application()
            app.add_routes([web.get("/status", status_handler), web.get("/page", page_handler)])
            runner = web.AppRunner(app, handle_signals=False, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            await asyncio.Event().wait()

        asyncio.run(main())
        return
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def s_status(request: object) -> Response:
        return Response(status, media_type="application/json")

    async def s_page(request: object) -> Response:
        return Response(page, media_type="application/json")

    app = Starlette(routes=[Route("/status", s_status), Route("/page", s_page)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    asyncio.run(uvicorn.Server(config).serve())


def hammer(port: int, path: str, n: int, connections: int = 16) -> float:
    """Requests/s of `n` GETs over `connections` keep-alive connections (aiohttp's client)."""
    import aiohttp

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"http://127.0.0.1:{port}{path}"
            left = n

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    async with session.get(url) as response:
                        await response.read()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            return n / (time.perf_counter() - started)

    return asyncio.run(main())


def server_choice(reps: int, n: int) -> list[str]:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return ["### The API server", "", "(uvicorn and starlette are not installed: skipped)"]
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for kind in ("aiohttp", "uvicorn"):
            proc = subprocess.Popen(
                [*pinned(0), sys.executable, __file__, "serve", kind, str(API_PORT)]
            )
            try:
                wait_up(f"http://127.0.0.1:{API_PORT}/status")
                for path in ("/status", "/page"):
                    rate = float(subprocess.run(
                        [*pinned(1), sys.executable, __file__, "hammer", str(API_PORT), path,
                         str(n)], capture_output=True, text=True, check=True,
                    ).stdout)  # fmt: skip
                    rates.setdefault((kind, path), []).append(rate)
            finally:
                proc.terminate()
                proc.wait(10)
    rows = []
    for path, what in (("/status", "a 170 B answer"), ("/page", "a 20 kB answer")):
        base = statistics.median(rates[("aiohttp", path)])
        for kind in ("aiohttp", "uvicorn"):
            got = statistics.median(rates[(kind, path)])
            rows.append(f"| {what} | {kind} | {got:,.0f} | {got / base:.2f} |")
    return [
        f"### The API server: {n:,} GETs over 16 keep-alive connections, median of {reps}",
        "",
        "| answer | server | req/s | ÷ aiohttp |",
        "|---|---|---|---|",
        *rows,
    ]


def wait_up(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered at {url}")


# -- submitting through the API ---------------------------------------------------------------


def submit_rates(workdir: Path, n: int, batch: int, reps: int) -> list[str]:
    jobs = [
        {"url": f"http://{ADDRESSES[i % 16]}:{PORT}/s{i}", "not_before": "2099-01-01T00:00:00Z"}
        for i in range(n)
    ]
    jsonl = workdir / "api-jobs.jsonl"
    jsonl.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    bodies = [json.dumps({"jobs": jobs[i : i + batch]}).encode() for i in range(0, n, batch)]
    cli: list[float] = []
    api: list[float] = []
    for _ in range(reps):
        for way in ("cli", "api"):
            db = fresh_db(workdir / "api-submit.db")
            env = fetcher_env(db, api_addr=f"127.0.0.1:{API_PORT}", log_level="warning")
            daemon = subprocess.Popen(
                [*pinned(0), sys.executable, "-m", "fetcher", "run"], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                wait_up(f"http://127.0.0.1:{API_PORT}/healthz")
                started = time.perf_counter()
                if way == "cli":
                    subprocess.run(
                        [*pinned(1), sys.executable, "-m", "fetcher", "submit", "-f", str(jsonl)],
                        env=env, check=True, capture_output=True,
                    )  # fmt: skip
                else:
                    with httpx.Client(timeout=120) as client:
                        for body in bodies:
                            answer = client.post(
                                f"http://127.0.0.1:{API_PORT}/v1/jobs", content=body,
                                headers={"Content-Type": "application/json"},
                            )  # fmt: skip
                            assert answer.json()["accepted"] == len(json.loads(body)["jobs"])
                (cli if way == "cli" else api).append(n / (time.perf_counter() - started))
            finally:
                daemon.terminate()
                daemon.wait(30)
    c, a = statistics.median(cli), statistics.median(api)
    return [
        f"### Submitting {n:,} jobs into a running daemon (SQLite), median of {reps}",
        "",
        "| how | jobs/s | ÷ `fetcher submit` |",
        "|---|---|---|",
        f"| `fetcher submit -f jobs.jsonl` | {c:,.0f} | 1.00 |",
        f"| POST /v1/jobs, {batch:,} a batch, one connection | {a:,.0f} | {a / c:.2f} |",
    ]


# -- fetching while the API is asked ----------------------------------------------------------


class Poller(threading.Thread):
    """/v1/status and /v1/results in turn, `per_s` calls a second, each call's latency kept."""

    def __init__(self, port: int, per_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, 1.0 / per_s
        self.latencies: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        after = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            while not wait_up_quiet(client):
                if self.stopping.wait(0.05):
                    return
            turn = 0
            while not self.stopping.is_set():
                began = time.perf_counter()
                try:
                    if turn % 2:
                        page = client.get("/v1/results", params={"after": after, "limit": 100})
                        after = page.json()["next"]
                    else:
                        client.get("/v1/status")
                except httpx.TransportError:
                    break  # the daemon drained and went
                took = time.perf_counter() - began
                self.latencies.append(took * 1000)
                turn += 1
                self.stopping.wait(max(0.0, self.every - took))


def wait_up_quiet(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def drain_under_polling(workdir: Path, n: int, concurrency: int, reps: int) -> list[str]:
    urls = workdir / "api-urls.txt"
    urls.write_text("".join(f"http://{ADDRESSES[i % 16]}:{PORT}/p{i}\n" for i in range(n)))
    times: dict[str, list[float]] = {"quiet": [], "polled": []}
    latencies: list[float] = []
    for _ in range(reps):
        for way in ("quiet", "polled"):
            db = fresh_db(workdir / "api-drain.db")
            env = fetcher_env(
                db, max_concurrency=concurrency, host_concurrency=concurrency, host_rate=0,
                api_addr=f"127.0.0.1:{API_PORT}", save_bodies="false", robots="ignore",
            )  # fmt: skip
            fetcher = [sys.executable, "-m", "fetcher"]
            subprocess.run([*fetcher, "submit", "-f", str(urls)], env=env, check=True,
                           capture_output=True)  # fmt: skip
            poller = Poller(API_PORT, 50) if way == "polled" else None
            if poller:
                poller.start()
            started = time.perf_counter()
            subprocess.run([*pinned(1), *fetcher, "run", "--drain"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            times[way].append(n / (time.perf_counter() - started))
            if poller:
                poller.stopping.set()
                poller.join(10)
                latencies += poller.latencies
    quiet, polled = statistics.median(times["quiet"]), statistics.median(times["polled"])
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [0.0] * 99
    return [
        f"### Fetching while the API is asked: {n:,} URLs, 16 hosts, C={concurrency},"
        f" median of {reps}",
        "",
        "| API | req/s | ÷ quiet |",
        "|---|---|---|",
        f"| on, nobody asking | {quiet:,.0f} | 1.00 |",
        f"| /v1/status and /v1/results 50 times a second | {polled:,.0f} | {polled / quiet:.2f} |",
        "",
        f"Latency of those {len(latencies):,} calls meanwhile: p50 {cuts[49]:.1f} ms,"
        f" p99 {cuts[98]:.1f} ms.",
    ]


def api_figures(workdir: Path, smoke: bool, reps: int, concurrency: int) -> list[str]:
    n_server, n_submit, n_drain = (2_000, 5_000, 1_000) if smoke else (20_000, 100_000, 20_000)
    return [
        *server_choice(reps, n_server),
        "",
        *submit_rates(workdir, n_submit, 1000, reps),
        "",
        *drain_under_polling(workdir, n_drain, concurrency, reps),
    ]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "hammer":
        print(hammer(int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
    else:
        import tempfile

        reps = int(os.environ.get("REPS", "3"))
        out = api_figures(Path(tempfile.mkdtemp(prefix="fetcher-api-")), "--smoke" in sys.argv,
                          reps, 64)  # fmt: skip
        print("\n".join(out))
