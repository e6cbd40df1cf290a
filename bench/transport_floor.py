"""What the client stack alone costs: the same GETs at the same concurrency through
    aiohttp          bare aiohttp, body read
    fetcher          httpx.Request → fetcher's AiohttpTransport → aiter_raw (fetcher's path,
                     without AsyncClient, without fetcher's own work)
    httpx-aiohttp    the same through httpx-aiohttp's transport (when the bench extra installed it)
Prints req/s for each, interleaved, median of the repetitions. Needs an origin; `make bench`
leaves its nginx config in its work directory, or use any fast server on loopback:

    taskset -c 1 .venv/bin/python bench/transport_floor.py http://127.0.0.2:18080/
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import time

import aiohttp
import httpx

from fetcher.transport import AiohttpTransport

HEADERS = {"User-Agent": "fetcher-bench", "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}


def transport_for(kind: str, session: aiohttp.ClientSession) -> httpx.AsyncBaseTransport | None:
    if kind == "fetcher":
        return AiohttpTransport(lambda: session)
    if kind == "httpx-aiohttp":
        import httpx_aiohttp

        transport: httpx.AsyncBaseTransport = httpx_aiohttp.AiohttpTransport(client=session)
        return transport
    return None


async def rate(kind: str, urls: list[str], concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, use_dns_cache=False), auto_decompress=False
    )
    transport = transport_for(kind, session)
    headers = httpx.Headers(HEADERS)
    ok = 0

    async def one(url: str) -> None:
        nonlocal ok
        async with semaphore:
            if kind == "aiohttp":
                async with session.get(url, headers=HEADERS) as r:
                    await r.read()
                    ok += r.status == 200
                return
            assert transport is not None
            response = await transport.handle_async_request(
                httpx.Request("GET", url, headers=headers)
            )
            async for _ in response.aiter_raw():
                pass
            await response.aclose()
            ok += response.status_code == 200

    started = time.perf_counter()
    await asyncio.gather(*(one(url) for url in urls))
    elapsed = time.perf_counter() - started
    await session.close()
    if ok != len(urls):
        raise RuntimeError(f"{kind}: {ok} answers of {len(urls)}")
    return len(urls) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="URL prefix; /<n> is appended")
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    urls = [f"{args.base.rstrip('/')}/{i}" for i in range(args.urls)]
    kinds = ["aiohttp", "fetcher"]
    if importlib.util.find_spec("httpx_aiohttp") is not None:
        kinds.append("httpx-aiohttp")
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.reps):
        for kind, values in rates.items():
            values.append(asyncio.run(rate(kind, urls, args.concurrency)))
    for kind, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{kind:14} {statistics.median(values):>7,.0f} req/s  (runs {runs})")


if __name__ == "__main__":
    main()
