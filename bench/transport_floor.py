"""What the client stack alone costs: the same GETs at the same concurrency through
    aiohttp          bare aiohttp, body read
    httpx-aiohttp    httpx.Request → httpx-aiohttp's handle_async_request → aiter_raw
                     (fetcher's path, without AsyncClient, without fetcher's own work)
    lean             the same httpx API over a minimal transport written on aiohttp
Prints req/s for each, interleaved, median of the repetitions. Needs an origin; `make bench`
leaves its nginx config in its work directory, or use any fast server on loopback:

    taskset -c 1 .venv/bin/python bench/transport_floor.py http://127.0.0.2:18080/
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

HEADERS = {"User-Agent": "fetcher-bench", "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}


class _Stream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        self._response.release()


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._session.request(
            request.method, str(request.url), headers=request.headers.multi_items(),
            allow_redirects=False,
        )  # fmt: skip
        return httpx.Response(
            response.status, headers=response.raw_headers, stream=_Stream(response), request=request
        )


async def rate(kind: str, urls: list[str], concurrency: int) -> float:
    semaphore = asyncio.Semaphore(concurrency)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, use_dns_cache=False), auto_decompress=False
    )
    transport: httpx.AsyncBaseTransport = (
        LeanTransport(session) if kind == "lean" else AiohttpTransport(client=session)
    )
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
    rates: dict[str, list[float]] = {"aiohttp": [], "httpx-aiohttp": [], "lean": []}
    for _ in range(args.reps):
        for kind, values in rates.items():
            values.append(asyncio.run(rate(kind, urls, args.concurrency)))
    for kind, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{kind:14} {statistics.median(values):>7,.0f} req/s  (runs {runs})")


if __name__ == "__main__":
    main()
