"""The HTTP API (`FETCHER_API_ADDR`): the daemon's queue for other programs, served by aiohttp
in the daemon's own event loop, beside the fetch pipeline (BENCHMARKS.md, "the API server").

    server.py   the listening socket, its connection cap, auth, body limits, problem details
    routes.py   one handler per route, each a few lines over the queue and the read side
    reads.py    the read-only queries, on connections of their own in threads of their own
    feed.py     the long poll of the results feed, woken by commits
    openapi.py  the OpenAPI 3 description of the routes (a test holds the two together)
"""

from fetcher.api.server import ApiServer

__all__ = ["ApiServer"]
