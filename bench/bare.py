"""The baselines: a bare httpx + asyncio.Semaphore loop over the same URLs, over httpx's
default transport, over fetcher's own aiohttp transport, or over httpx-aiohttp's (when the bench
extra installed it); or a bare aiohttp + Semaphore loop (`aiohttp`). Each reads every body
whole. Prints how many 200s it got. With --post, the aiohttp loop sends each URL a POST of a
1 kB body and the three headers of `POST_HEADERS` (what `make bench`'s requests case has
fetcher send)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
import httpx

from fetcher.transport import AiohttpTransport

TRANSPORTS = ("default", "fetcher", "httpx-aiohttp", "aiohttp")
POST_BODY = b"k=" + b"v" * 1022
POST_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded", "X-Request-Id": "bench",
    "Authorization": "Bearer bench-token",
}  # fmt: skip


def transport_for(name: str, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    if name == "fetcher":
        return AiohttpTransport(
            lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limits.max_connections or 0),
                auto_decompress=False,
            )
        )
    if name == "httpx-aiohttp":
        import httpx_aiohttp

        transport: httpx.AsyncBaseTransport = httpx_aiohttp.AiohttpTransport(limits=limits)
        return transport
    return None


async def fetch_all_aiohttp(urls: list[str], concurrency: int, post: bool = False) -> int:
    semaphore = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        nonlocal ok
        asked = (
            session.post(url, data=POST_BODY, headers=POST_HEADERS) if post else session.get(url)
        )
        async with semaphore, asked as response:
            await response.read()
            ok += response.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, url) for url in urls))
    return ok


async def fetch_all(urls: list[str], concurrency: int, transport: str, post: bool) -> int:
    if transport == "aiohttp":
        return await fetch_all_aiohttp(urls, concurrency, post)
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = httpx.AsyncClient(transport=transport_for(transport, limits), limits=limits)
    ok = 0

    async def one(url: str) -> None:
        nonlocal ok
        async with semaphore:
            response = await client.get(url)  # reads the body whole
            ok += response.status_code == 200

    async with client:
        await asyncio.gather(*(one(url) for url in urls))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=TRANSPORTS)
    parser.add_argument("concurrency", type=int)
    parser.add_argument("urls")
    parser.add_argument("--post", action="store_true", help="a 1 kB POST with 3 headers (aiohttp)")
    args = parser.parse_args()
    with open(args.urls) as f:
        urls = [line.strip() for line in f if line.strip()]
    print(asyncio.run(fetch_all(urls, args.concurrency, args.transport, args.post)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
