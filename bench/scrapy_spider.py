"""The Scrapy baseline: the same URLs at the same concurrency, bodies read and dropped."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess

RESPONSES = [0]  # 200s received; printed for the benchmark to check


class Bench(scrapy.Spider):  # type: ignore[misc,unused-ignore]  # untyped without scrapy
    name = "bench"

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls = urls

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for url in self._urls:
            yield scrapy.Request(url, dont_filter=True)

    def parse(self, response: Any) -> None:
        RESPONSES[0] += response.status == 200


def main() -> int:
    concurrency, path = int(sys.argv[1]), sys.argv[2]
    with open(path) as f:
        urls = [line.strip() for line in f if line.strip()]
    process = CrawlerProcess(
        settings={
            "CONCURRENT_REQUESTS": concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
            "CONCURRENT_REQUESTS_PER_IP": 0,
            "DOWNLOAD_DELAY": 0,
            "ROBOTSTXT_OBEY": False,
            "RETRY_ENABLED": False,
            "COOKIES_ENABLED": False,
            "LOG_LEVEL": "ERROR",
            "TELNETCONSOLE_ENABLED": False,
        }
    )
    process.crawl(Bench, urls=urls)
    process.start()
    print(RESPONSES[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
