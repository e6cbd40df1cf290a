"""fetcher's own httpx transport on aiohttp, over real loopback sockets (respx would replace it):
certificates are verified, a body abandoned half-read takes its connection with it, a body read
to its end leaves its connection for the next request, and nothing is followed or decoded."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import trustme
from aiohttp import web

from fetcher.config import Settings
from fetcher.fetch import Fetcher
from fetcher.guard import Guard
from fetcher.transport import AiohttpTransport, HttpxTransport, build_transport
from fetcher.urls import parse_url, stored_target

from .conftest import RawListener

HOST = "127.0.0.14"  # not one of the shared origin's addresses


class Server:
    """An aiohttp origin in the test's own loop that notes the client port of every request."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.transports: list[asyncio.BaseTransport | None] = []
        self.requests: list[web.Request] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if peer else -1)
        self.transports.append(request.transport)
        self.requests.append(request)
        match request.match_info["name"]:
            case "big":
                return web.Response(body=b"x" * 200_000)
            case "redirect":
                return web.Response(status=302, headers={"Location": "/small"})
            case "gzip":
                return web.Response(
                    body=gzip.compress(b"y" * 5000), headers={"Content-Encoding": "gzip"}
                )
            case _:
                return web.Response(body=b"small")


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    ssl_context: ssl.SSLContext | None = getattr(request, "param", None)
    state = Server()
    app = web.Application()
    app.router.add_get("/{name}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
    await site.start()
    assert site._server is not None
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield state
    finally:
        await runner.cleanup()


def make_fetcher(tmp_path: Path, **overrides: object) -> Fetcher:
    settings = Settings(db=tmp_path / "f.db", allow_private=True, **overrides)  # type: ignore[arg-type]
    guard = Guard(allow_private=True)
    return Fetcher(settings, build_transport(settings, guard), None)


def _untrusted_tls() -> ssl.SSLContext:
    ca = trustme.CA()  # a CA the client does not know
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    return context


@pytest.mark.parametrize("server", [_untrusted_tls()], indirect=True)
async def test_a_certificate_from_an_unknown_authority_is_refused(
    server: Server, tmp_path: Path
) -> None:
    fetcher = make_fetcher(tmp_path)
    try:
        hop = await fetcher.fetch(parse_url(f"https://{HOST}:{server.port}/small"))
    finally:
        await fetcher.aclose()
    assert hop.status is None
    assert hop.error is not None and "certificate verify failed" in hop.error, hop.error
    assert server.requests == []  # the handshake failed: no request reached the handler


async def test_a_body_abandoned_at_the_cap_closes_its_connection_a_read_one_is_reused(
    server: Server, tmp_path: Path
) -> None:
    fetcher = make_fetcher(tmp_path, max_body_bytes=100_000)
    base = f"http://{HOST}:{server.port}"
    try:
        first = await fetcher.fetch(parse_url(f"{base}/small"))
        second = await fetcher.fetch(parse_url(f"{base}/small"))
        capped = await fetcher.fetch(parse_url(f"{base}/big"))
        after = await fetcher.fetch(parse_url(f"{base}/small"))
    finally:
        await fetcher.aclose()
    assert (first.status, second.status, after.status) == (200, 200, 200)
    assert capped.refused is not None and capped.refused.reason == "body exceeds 100000 bytes"
    one, two, big, three = server.peers
    assert one == two == big  # kept alive while every body was read to its end
    assert three != big  # the half-read response's connection was closed, not pooled
    for _ in range(100):  # the server sees the close within a few loop turns
        if (closed := server.transports[2]) is None or closed.is_closing():
            break
        await asyncio.sleep(0.01)
    assert closed is None or closed.is_closing()


async def test_requests_go_as_given_nothing_followed_or_decoded_on_the_way(
    server: Server, tmp_path: Path
) -> None:
    fetcher = make_fetcher(tmp_path, user_agent="probe/1")
    base = f"http://{HOST}:{server.port}"
    try:
        redirect = await fetcher.fetch(parse_url(f"{base}/redirect"))
        zipped = await fetcher.fetch(parse_url(f"{base}/gzip"))
    finally:
        await fetcher.aclose()
    assert (redirect.status, redirect.location) == (302, "/small")
    assert [r.path for r in server.requests] == ["/redirect", "/gzip"]  # the 302 was not followed
    assert zipped.bytes == 5000  # decoded once, by fetcher's capped decoder
    sent = server.requests[0].headers
    assert sent["User-Agent"] == "probe/1" and sent["Host"] == f"{HOST}:{server.port}"
    assert "gzip" in sent["Accept-Encoding"]


async def test_the_transport_speaks_httpx_to_any_httpx_client(server: Server) -> None:
    """The transport under a plain httpx.AsyncClient (as `make bench` runs it)."""
    transport = AiohttpTransport(lambda: aiohttp.ClientSession(auto_decompress=False))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"http://{HOST}:{server.port}/gzip")
    assert response.status_code == 200 and response.content == b"y" * 5000


async def test_a_stored_url_goes_out_as_an_httpx_request_would_send_it(
    server: Server, tmp_path: Path
) -> None:
    """fetcher's own transport is handed the stored URL without an httpx.Request: the server
    sees the same request line either way (through `HttpxTransport`, as the tests' respx
    routes are, the URL is parsed by httpx on the way)."""
    settings = Settings(db=tmp_path / "f.db", allow_private=True)
    guard = Guard(allow_private=True)
    target = parse_url(f"http://{HOST}:{server.port}/x/./../sm%61ll-é|x?a=b%20c&d=/../ü#frag")
    for transport in (
        build_transport(settings, guard),
        HttpxTransport(build_transport(settings, guard)),
    ):
        fetcher = Fetcher(settings, transport, None)
        try:
            hop = await fetcher.fetch(target)
        finally:
            await fetcher.aclose()
        assert (hop.status, hop.error) == (200, None)
    direct, through_request = server.requests
    assert direct.raw_path == through_request.raw_path == target.url.split(str(server.port), 1)[1]
    assert sorted(direct.headers.items()) == sorted(through_request.headers.items())


async def test_a_url_put_in_the_queue_by_hand_is_refused_not_sent(
    server: Server, tmp_path: Path
) -> None:
    """A row written into `jobs` with plain SQL skips submit's validation: the direct path
    refuses what is not a stored URL's text rather than send it."""
    fetcher = make_fetcher(tmp_path)
    key = f"{HOST}:{server.port}"
    try:
        hop = await fetcher.fetch(stored_target(f"http://{key}/a b\r\nX-Injected: 1", key))
    finally:
        await fetcher.aclose()
    assert hop.status is None and "not a URL as fetcher stores them" in (hop.error or "")
    assert server.requests == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def test_network_failures_are_named_and_the_connect_timeout_is_its_own(
    tmp_path: Path,
) -> None:
    """On aiohttp's real path: nothing listening is a connect error; a host that never
    answers the SYN is a connect timeout after FETCHER_CONNECT_TIMEOUT (well inside the
    request's deadline); a server that hangs up without a response is named as such."""
    fetcher = make_fetcher(tmp_path, connect_timeout=0.3, timeout=20)
    silent, hang_up = RawListener(HOST, full=True), RawListener(HOST, full=False)
    loop = asyncio.get_running_loop()
    try:
        refused = await fetcher.fetch(parse_url(f"http://{HOST}:{_free_port()}/x"))
        started = loop.time()
        timed_out = await fetcher.fetch(parse_url(f"http://{HOST}:{silent.port}/x"))
        waited = loop.time() - started
        closed = await fetcher.fetch(parse_url(f"http://{HOST}:{hang_up.port}/x"))
    finally:
        await fetcher.aclose()
        silent.close()
        hang_up.close()
    assert refused.status is None and refused.error is not None
    assert refused.error.startswith("connect error:") and "onnect" in refused.error, refused.error
    assert (timed_out.status, timed_out.error) == (None, "connect timeout")
    assert 0.25 <= waited < 5, waited
    assert (closed.status, closed.error) == (
        None, "connection closed by the server before a response",
    )  # fmt: skip
    assert refused.sends == timed_out.sends == 1
    assert closed.sends == hang_up.accepted >= 1  # aiohttp may send once more: both counted
