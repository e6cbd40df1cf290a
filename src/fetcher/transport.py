"""Requests on the wire: fetcher's transport interface, and the one it runs on (aiohttp).

`Transport.send` takes a `Request` (method, a URL in fetcher's normal form, headers, body) and
gives an `httpx.Response` whose body streams as it arrives, undecoded: redirects, decoding and
deadlines are the caller's (`fetch.py`). Production sends through `AiohttpTransport` (httpx's
own transport slows down as concurrency grows: encode/httpx#3215), connecting only to addresses
the guard approved; tests put any httpx transport behind `HttpxTransport` (respx's router,
`httpx.MockTransport`): the seam, as httpx's `MockTransport` is httpx's. Both are the same path
for the code above them.

    AiohttpTransport.send (its connector counts every send)
      → guard.check (resolve, refuse non-public, pin) when a new connection is wanted
      → connect to the pinned address, the socket refused if its peer is not public, whatever
        led there
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httpx
import yarl
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection

from fetcher.config import Settings
from fetcher.errors import BlockedDestination
from fetcher.guard import Guard

__all__ = [
    "AiohttpTransport", "HttpxTransport", "Request", "Transport", "build_transport",
    "count_sends",
]  # fmt: skip

_KEEPALIVE_S = 5.0
_sends: ContextVar[list[int]] = ContextVar("fetcher_sends")


@dataclass(frozen=True, slots=True)
class Request:
    """One request as fetcher sends it: `url` in fetcher's normal form (`urls.parse_url`)."""

    method: str
    url: str
    headers: Sequence[tuple[str, str]]
    body: bytes | None = None


class Transport(Protocol):
    async def send(self, request: Request) -> httpx.Response:
        """Send `request`; the response with its body still to be read (`aiter_raw`)."""
        ...

    async def aclose(self) -> None: ...


def count_sends() -> list[int]:
    """A counter of the requests the transport puts on the wire from here on, in this task
    (aiohttp re-sends once on a reused connection that resets: each send counts)."""
    sends = [0]
    _sends.set(sends)
    return sends


class _PinnedResolver(AbstractResolver):
    """aiohttp asks here for a host's addresses: it gets the ones the guard checked."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._guard.pinned(host, port) or await self._guard.check(host, port)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class _CountingConnector(aiohttp.TCPConnector):
    """aiohttp asks its connector for a connection once a send (its one retry on a reused
    connection that reset included): each ask is counted. A client middleware did the same
    for more (BENCHMARKS.md, "counted by the connector")."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        counter = _sends.get(None)
        if counter is not None:
            counter[0] += 1
        return await super().connect(req, traces, timeout)


def _checked_socket(guard: Guard) -> Callable[[AddrInfoType], socket.socket]:
    """aiohttp makes the socket for each address it is about to connect to here: whatever led
    it there (the pinned resolver, or a path that bypassed it), a non-public peer is refused
    before a byte is sent to it."""

    def make(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _name, address = addr_info
        reason = guard.verdict(str(address[0]))
        if reason is not None:
            raise BlockedDestination(f"blocked destination: connecting to {reason}")
        return socket.socket(family, kind, proto)

    return make


def build_transport(settings: Settings, guard: Guard) -> AiohttpTransport:
    """aiohttp's transport, connecting only to the addresses the guard approved, each connect
    given FETCHER_CONNECT_TIMEOUT at most."""
    connect_timeout_s = settings.connect_timeout

    def session() -> aiohttp.ClientSession:
        connector = _CountingConnector(
            limit=0,
            use_dns_cache=False,
            resolver=_PinnedResolver(guard),
            # idle connections are memory and file descriptors: over thousands of hosts, keep
            # only those a host reuses soon
            keepalive_timeout=_KEEPALIVE_S,
            socket_factory=None if guard.allow_private else _checked_socket(guard),
        )
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,
            # only the connect is timed here: the caller's whole-request deadline covers every
            # read, and per-read timers cost aiohttp a timer reschedule per chunk
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        )

    return AiohttpTransport(session)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """fetcher's transport over an aiohttp session: what httpx-aiohttp does, less the
    per-request work a fetcher has no use for (BENCHMARKS.md, "own transport"). It sends the
    method, URL, headers and body as they are (no redirects, no decoding: the caller does
    both) and lets aiohttp's errors through for the caller to word. The URL goes as it is,
    without an httpx.Request: building one parses it again, in Python, into the same string
    (tests/unit/test_urls.py), a large share of fetcher's own work per job (BENCHMARKS.md,
    "stored URL"). It also serves httpx's transport interface (`handle_async_request`), as
    the benchmark's bare httpx loops use it.

    `session` is a factory: aiohttp's session belongs to the event loop it is made in, so it
    is made on first use."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        self._make_session = session
        self._session: aiohttp.ClientSession | None = None

    async def send(self, request: Request) -> httpx.Response:
        if self._session is None:
            self._session = self._make_session()
        response = await self._session.request(
            request.method,
            yarl.URL(request.url, encoded=True),
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
        )
        return _httpx_response(response)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content or None  # httpx has parsed and percent-encoded the URL already
        return await self.send(
            Request(request.method, str(request.url), request.headers.multi_items(), body)
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _httpx_response(response: aiohttp.ClientResponse) -> httpx.Response:
    """The response as httpx's, with its status line as received and the address connected to
    (`extensions["peer"]`, for the WARC record)."""
    version = response.version or aiohttp.HttpVersion11
    extensions: dict[str, object] = {
        "http_version": f"HTTP/{version.major}.{version.minor}".encode(),
        "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
    }
    peer = _peer_of(response)
    if peer:
        extensions["peer"] = peer
    return httpx.Response(
        response.status, headers=response.raw_headers, stream=_ResponseBody(response),
        extensions=extensions,
    )  # fmt: skip


def _peer_of(response: aiohttp.ClientResponse) -> str | None:
    """The address the response came from. A body that came whole with the headers has
    already given its connection back (`response.connection` None); its protocol still knows."""
    protocol = getattr(response, "_protocol", None)
    transport = getattr(protocol, "transport", None)
    if transport is None and response.connection is not None:
        transport = response.connection.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if peer else None


class _ResponseBody(httpx.AsyncByteStream):
    """The body as aiohttp receives it. Closed before its end, it closes the connection (a
    half-read response cannot be reused); read to its end, the connection goes back to the
    pool."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aclose(self) -> None:
        self._response.release()


class HttpxTransport:
    """Any httpx transport as fetcher's: each request handed over as an `httpx.Request`, and
    counted as one send. Where the tests put respx's router or `httpx.MockTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def send(self, request: Request) -> httpx.Response:
        counter = _sends.get(None)
        if counter is not None:
            counter[0] += 1
        return await self._inner.handle_async_request(
            httpx.Request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        )

    async def aclose(self) -> None:
        await self._inner.aclose()
