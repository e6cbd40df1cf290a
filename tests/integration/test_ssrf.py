"""SSRF past the first check, over real loopback sockets.

The guard's test-only seam makes one loopback address (PUBLIC) stand for a public host, and a
name answer differently from one lookup to the next; INTERNAL stays what it is, loopback. Then:
a redirect from the public host to an internal one, a DNS answer that changes between the check
and the connect, and a connection that reaches a peer other than the checked one are each
refused, and the internal server never sees a request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fetcher.config import Settings
from fetcher.daemon import build_service
from fetcher.fetch import Fetcher
from fetcher.guard import Guard
from fetcher.model import JobState
from fetcher.transport import build_transport
from fetcher.urls import parse_url
from tests.jobs import job_for
from tests.memory_queue import MemoryQueue

PUBLIC = "127.0.0.21"
INTERNAL = "127.0.0.22"


class Server:
    """An origin on one address that counts what reaches it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        self.paths: list[str] = []
        self.redirect_to = ""
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, port)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if request.path == "/go" and self.redirect_to:
            return web.Response(status=302, headers={"Location": self.redirect_to})
        return web.Response(body=f"{self.address} {request.path}".encode())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def public() -> AsyncIterator[Server]:
    server = Server(PUBLIC)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def internal(public: Server) -> AsyncIterator[Server]:
    """On the same port as `public`, so that one URL can lead to either."""
    server = Server(INTERNAL)
    await server.start(public.port)
    try:
        yield server
    finally:
        await server.stop()


class Lookups:
    """A resolver whose answers for names come from a script, one per lookup (the last one
    repeats); addresses resolve to themselves, as the real resolver does."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        if host[0].isdigit():
            return [host]
        self.asked.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def _fetcher(tmp_path: Path, guard: Guard) -> Fetcher:
    settings = Settings(db=tmp_path / "unused.db", allow_private=False, timeout=5)
    return Fetcher(settings, build_transport(settings, guard), None)


@pytest.mark.parametrize(
    "location",
    ["http://{internal}:{port}/secret", "http://localhost:{port}/secret",
     "http://[::ffff:{internal}]:{port}/secret", "http://2130706454:{port}/secret"],
)  # fmt: skip
async def test_a_redirect_from_a_public_host_to_an_internal_one_is_refused(
    tmp_path: Path, public: Server, internal: Server, location: str
) -> None:
    """The daemon follows a redirect from the public host; its target is loopback (in four
    spellings): the job fails as a blocked destination, the internal server sees nothing."""
    public.redirect_to = location.format(internal=INTERNAL, port=public.port)
    guard = Guard(allow_private=False, treat_as_public=frozenset({PUBLIC}))
    queue = MemoryQueue()
    await queue.submit([job_for(f"http://{PUBLIC}:{public.port}/go")])
    settings = Settings(db=tmp_path / "unused.db", allow_private=False, timeout=5, robots="ignore")
    fetcher = Fetcher(settings, build_transport(settings, guard), None)
    service = build_service(settings, queue, fetcher, drain=True, install_signal_handlers=False)
    try:
        summary = await service.run()
    finally:
        await fetcher.aclose()
    assert public.paths == ["/go"]
    assert internal.paths == []
    assert summary.failed == 1
    (result,) = queue.results.values()
    assert result.state is JobState.FAILED
    assert result.error is not None and result.error.startswith("blocked destination")


async def test_a_dns_answer_that_changes_after_the_check_does_not_move_the_connection(
    tmp_path: Path, public: Server
) -> None:
    """`localhost` is checked once, answering the public address; when aiohttp connects, the
    real DNS would say 127.0.0.1, where an internal server listens on the same port. The
    request goes to the address that was checked (pinned) and to no other, and the name is
    looked up once."""
    internal = Server("127.0.0.1")
    await internal.start(public.port)
    lookups = Lookups([PUBLIC])
    guard = Guard(allow_private=False, resolve=lookups, treat_as_public=frozenset({PUBLIC}))
    fetcher = _fetcher(tmp_path, guard)
    try:
        hop = await fetcher.fetch(parse_url(f"http://localhost:{public.port}/page"))
    finally:
        await fetcher.aclose()
        await internal.stop()
    assert hop.error is None and hop.refused is None and hop.status == 200
    assert public.paths == ["/page"] and internal.paths == []
    assert lookups.asked == ["localhost"]


async def test_a_name_rebound_to_an_internal_address_is_refused_on_the_next_lookup(
    tmp_path: Path, public: Server, internal: Server
) -> None:
    """A name that answered the public address, then (its cached answer expired) the internal
    one: the second request is refused before it connects."""
    now = [0.0]
    lookups = Lookups([PUBLIC], [INTERNAL])
    guard = Guard(
        allow_private=False,
        resolve=lookups,
        treat_as_public=frozenset({PUBLIC}),
        clock=lambda: now[0],
    )
    fetcher = _fetcher(tmp_path, guard)
    url = parse_url(f"http://shop.test:{public.port}/page")
    try:
        first = await fetcher.fetch(url, keep_body=False, reuse=False)
        now[0] += 3600
        second = await fetcher.fetch(url, keep_body=False)
    finally:
        await fetcher.aclose()
    assert first.status == 200
    assert second.refused is not None and "is loopback" in second.refused.reason
    assert public.paths == ["/page"] and internal.paths == []


class MisPinningGuard(Guard):
    """A guard whose pinned answer is not what it checked: the situation the connect-time
    peer check exists for (a resolver path that bypassed the pin)."""

    def pinned(self, host: str, port: int) -> list[str] | None:
        return [INTERNAL]


async def test_a_connection_to_a_peer_other_than_the_checked_one_is_refused_before_sending(
    tmp_path: Path, public: Server, internal: Server
) -> None:
    """The name was checked against the public address, but aiohttp is handed the internal
    one: the socket is refused before it connects, so the internal server sees nothing."""
    guard = MisPinningGuard(
        allow_private=False, resolve=Lookups([PUBLIC]), treat_as_public=frozenset({PUBLIC})
    )
    fetcher = _fetcher(tmp_path, guard)
    try:
        hop = await fetcher.fetch(parse_url(f"http://shop.test:{public.port}/page"))
    finally:
        await fetcher.aclose()
    assert hop.refused is not None, hop.error
    assert hop.refused.reason == f"blocked destination: connecting to {INTERNAL} is loopback"
    assert internal.paths == [] and public.paths == []
