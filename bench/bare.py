"""The baselines: a bare httpx + asyncio.Semaphore loop over the same URLs, with httpx's default
transport or the aiohttp transport fetcher uses. Prints how many responses it read."""

from __future__ import annotations

import argparse
import asyncio
import sys

import httpx
from httpx_aiohttp import AiohttpTransport


async def fetch_all(urls: list[str], concurrency: int, transport: str) -> int:
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "aiohttp":
        client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits))
    else:
        client = httpx.AsyncClient(limits=limits)
    ok = 0

    async def one(url: str) -> None:
        nonlocal ok
        async with semaphore:
            response = await client.get(url)
            ok += response.status_code == 200

    async with client:
        await asyncio.gather(*(one(url) for url in urls))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["default", "aiohttp"])
    parser.add_argument("concurrency", type=int)
    parser.add_argument("urls")
    args = parser.parse_args()
    with open(args.urls) as f:
        urls = [line.strip() for line in f if line.strip()]
    print(asyncio.run(fetch_all(urls, args.concurrency, args.transport)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
