"""One hop of a job on the wire: send (guarded in the transport), read under a deadline and a cap.

The only module that speaks HTTP. It uses httpx's API over a transport of its own on aiohttp
(httpx's own transport slows down as concurrency grows: encode/httpx#3215). Requests go straight
to the transport, httpx.Response out: no client layer, so no cookie jar carries one job's cookies
into another's request, and no per-request cost for features a fetcher does not use. fetcher's
own transport takes the stored URL, already in normal form, as it is; any other httpx transport
will do too (an httpx.Request in), which is where the unit tests put respx. Library errors
become one-line reasons here.

    client.send (a middleware counts every send)
      → guard.check (resolve, refuse non-public, pin) when a new connection is wanted
      → connect to the pinned address, the socket refused if its peer is not public, whatever
        led there
        → CappedDecoder (decoded-size cap) → BodySink (hash, spill to disk)
all inside one `asyncio.timeout`: FETCHER_TIMEOUT is a deadline for the whole hop, not per read.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextvars import ContextVar

import aiohttp
import httpx
import yarl
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult

from fetcher.bodies import BodySink, BodyStore
from fetcher.config import Settings
from fetcher.decoding import ACCEPT_ENCODING, CappedDecoder
from fetcher.errors import BlockedDestination, BodyNotKept, BodyTooLarge, Refused
from fetcher.guard import Guard
from fetcher.model import REDIRECT_STATUSES, Hop, Validators
from fetcher.urls import Target

__all__ = ["AiohttpTransport", "Fetcher", "build_transport"]

_KEEPALIVE_S = 5.0
_sends: ContextVar[list[int]] = ContextVar("fetcher_sends")
_NOT_URL_TEXT = re.compile(r"[^\x21-\x7e]")  # a normal-form URL is printable ASCII, no space


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


async def _count_sends(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    counter = _sends.get(None)
    if counter is not None:
        counter[0] += 1
    return await handler(request)


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


def build_transport(guard: Guard) -> httpx.AsyncBaseTransport:
    """aiohttp's transport, connecting only to the addresses the guard approved."""

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
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
            middlewares=(_count_sends,),
        )

    return AiohttpTransport(session)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over an aiohttp session: what httpx-aiohttp does, less the
    per-request work a fetcher has no use for (BENCHMARKS.md, "own transport"). It sends the
    request's method, URL, headers and bytes body as they are (no redirects, no decoding: the
    caller does both), honours the `connect` and `read` timeout extensions, and lets aiohttp's
    errors through for the caller to word.

    `session` is a factory: aiohttp's session belongs to the event loop it is made in, so it
    is made on first use."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        self._make_session = session
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._send(
            request.method,
            str(request.url),  # httpx has parsed, checked and percent-encoded it already
            request.headers.multi_items(),
            request.content or None,
            request.extensions.get("timeout"),
        )
        return _httpx_response(response, request)

    async def get(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        timeouts: Mapping[str, float | None] | None = None,
    ) -> httpx.Response:
        """GET `url`, a URL in fetcher's normal form, without an httpx.Request: building one
        parses the URL again, in Python, into the same string (tests/unit/test_urls.py), a
        large share of fetcher's own work per job (BENCHMARKS.md, "stored URL"). A row
        put in the queue by hand, not by `submit`, may hold anything: what is not printable
        ASCII without spaces is refused here, not sent."""
        if _NOT_URL_TEXT.search(url):
            raise ValueError(f"not a URL as fetcher stores them: {url[:200]!r}")
        return _httpx_response(await self._send("GET", url, headers, None, timeouts), None)

    async def _send(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeouts: Mapping[str, float | None] | None,
    ) -> aiohttp.ClientResponse:
        if self._session is None:
            self._session = self._make_session()
        return await self._session.request(
            method,
            yarl.URL(url, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=self._timeout(timeouts),
        )

    def _timeout(self, asked: Mapping[str, float | None] | None) -> aiohttp.ClientTimeout:
        key = (asked.get("connect"), asked.get("read")) if asked else (None, None)
        timeout = self._timeouts.get(key)
        if timeout is None:  # one per distinct setting, not one per request
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=key[0], sock_read=key[1]
            )
        return timeout

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _httpx_response(
    response: aiohttp.ClientResponse, request: httpx.Request | None
) -> httpx.Response:
    return httpx.Response(
        response.status,
        headers=response.raw_headers,
        stream=_ResponseBody(response),
        request=request,
    )


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


class Fetcher:
    """Fetches one hop of a job."""

    def __init__(
        self,
        settings: Settings,
        transport: httpx.AsyncBaseTransport,
        bodies: BodyStore | None,
    ) -> None:
        self._transport = transport
        # fetcher's own transport takes the stored URL as it is; any other (respx in the unit
        # tests) gets an httpx.Request
        self._direct = transport if isinstance(transport, AiohttpTransport) else None
        self._header_items = [
            ("User-Agent", settings.user_agent), ("Accept", "*/*"),
            ("Accept-Encoding", ACCEPT_ENCODING),
        ]  # fmt: skip
        self._closing_items = [*self._header_items, ("Connection", "close")]
        # Only the connect timeout goes to the transport: the whole-hop deadline below covers
        # every read, and per-read timers cost aiohttp a timer reschedule per chunk.
        self._timeouts: dict[str, float | None] = {"connect": settings.connect_timeout}
        self._bodies = bodies
        self._timeout_s = settings.timeout
        self._max_body_bytes = settings.max_body_bytes

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def fetch(
        self,
        target: Target,
        *,
        keep_body: bool = True,
        reuse: bool = True,
        validators: Validators | None = None,
        collect: bytearray | None = None,
        max_bytes: int | None = None,
    ) -> Hop:
        """Send one GET to `target` and read its response; never raises for the network's sake.
        With `reuse` False the request says `Connection: close`: no next request needs the
        connection, so neither side keeps it open idle. With `validators` the request is
        conditional, and a 304 points at the body kept before. `collect` receives the decoded
        body in memory, at most `max_bytes` of it (instead of FETCHER_MAX_BODY_BYTES)."""
        sends = [0]
        _sends.set(sends)
        started = time.perf_counter()
        hop = Hop(target, 0, 0.0)
        sink: BodySink | _Collector | None = None
        if collect is not None:
            sink = _Collector(collect)
        elif self._bodies is not None and keep_body:
            sink = self._bodies.sink()
        headers = self._header_items if reuse else self._closing_items
        if validators is not None:
            headers = [*headers, *_conditions(validators)]
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._exchange(hop, sink, headers, max_bytes or self._max_body_bytes)
            if hop.status == 304 and validators is not None:
                hop.body_sha256, hop.body_path = validators.body_sha256, validators.body_path
        except Refused as exc:
            hop.refused = exc
        except BodyNotKept as exc:
            hop.local_error = exc.reason
        except aiohttp.ServerTimeoutError as exc:  # a connect or read timeout: before the
            hop.error = _reason(exc)  # deadline's TimeoutError, which it also is
        except TimeoutError:
            hop.error = f"timeout: no complete response within {self._timeout_s:g}s"
        except (httpx.HTTPError, aiohttp.ClientError, OSError, ValueError) as exc:
            hop.error = _reason(exc)
        finally:
            hop.sends = sends[0]
            hop.latency_ms = (time.perf_counter() - started) * 1000.0
            if isinstance(sink, BodySink) and hop.body_sha256 is None:
                sink.discard()
        if hop.error is not None:
            hop.status = None  # a body cut short is no response
        return hop

    async def _exchange(
        self,
        hop: Hop,
        sink: BodySink | _Collector | None,
        headers: Sequence[tuple[str, str]],
        max_bytes: int,
    ) -> None:
        if self._direct is not None:
            response = await self._direct.get(hop.target.url, headers, self._timeouts)
        else:
            request = httpx.Request(
                "GET", hop.target.url, headers=headers, extensions={"timeout": self._timeouts}
            )
            response = await self._transport.handle_async_request(request)
        try:
            hop.status = response.status_code
            encoding = _read_headers(hop, response.headers.raw)
            decoder = CappedDecoder(encoding, max_bytes)
            async for raw in response.aiter_raw():
                for piece in decoder.feed(raw):
                    if sink is not None:
                        sink.write(piece)
                hop.bytes = decoder.decoded
        except BodyTooLarge as exc:
            hop.bytes = max_bytes
            raise Refused(exc.reason) from None
        finally:
            await response.aclose()
        if isinstance(sink, BodySink) and hop.location is None and hop.status != 304:
            hop.body_sha256, hop.body_path = sink.commit()


def _read_headers(hop: Hop, raw: list[tuple[bytes, bytes]]) -> str:
    """One pass over the raw headers (httpx's Headers.get decodes all of them per call): set
    the hop's Location and Retry-After (the first of each) where they matter; return every
    Content-Encoding, in order, as one list (codings split across headers stack too)."""
    encodings = []
    for key, value in raw:
        name = key.lower()
        if name == b"content-encoding":
            encodings.append(value.decode("latin-1"))
        elif name == b"location" and hop.status in REDIRECT_STATUSES and hop.location is None:
            hop.location = value.decode("latin-1")
        elif name == b"retry-after" and hop.status in (429, 503) and hop.retry_after is None:
            hop.retry_after = value.decode("latin-1")
        elif name == b"etag" and hop.etag is None:
            hop.etag = value.decode("latin-1")
        elif name == b"last-modified" and hop.last_modified is None:
            hop.last_modified = value.decode("latin-1")
    return ", ".join(encodings)


def _conditions(validators: Validators) -> list[tuple[str, str]]:
    """A conditional GET's headers: the validators the last response of this URL gave."""
    headers = []
    if validators.etag is not None:
        headers.append(("If-None-Match", validators.etag))
    if validators.last_modified is not None:
        headers.append(("If-Modified-Since", validators.last_modified))
    return headers


class _Collector:
    """A body kept in memory (robots.txt), up to the cap the decoder enforces."""

    __slots__ = ("_into",)

    def __init__(self, into: bytearray) -> None:
        self._into = into

    def write(self, piece: bytes) -> None:
        self._into += piece


def _reason(exc: BaseException) -> str:
    """One line for an exception from the client stack, most specific cause first."""
    cause: BaseException = exc
    if not isinstance(exc, aiohttp.ClientError) and isinstance(
        exc.__cause__, aiohttp.ClientError | OSError
    ):
        cause = exc.__cause__  # aiohttp's error wrapped by another layer: it says more
    text = str(cause).strip()
    detail = text.splitlines()[0][:200] if text else type(cause).__name__
    match cause:
        case aiohttp.ConnectionTimeoutError() | httpx.ConnectTimeout():
            return "connect timeout"
        case aiohttp.ServerTimeoutError() | httpx.TimeoutException():
            return "read timeout"
        case aiohttp.ClientPayloadError():
            return f"truncated body: {detail}"
        case aiohttp.ServerDisconnectedError():
            return "connection closed by the server before a response"
        case aiohttp.ClientConnectorError() | httpx.ConnectError() | ConnectionRefusedError():
            return f"connect error: {detail}"
        case ConnectionResetError() | aiohttp.ClientOSError() if "reset" in detail.lower():
            return "connection reset"
        case aiohttp.ClientResponseError() | httpx.RemoteProtocolError() | httpx.DecodingError():
            return f"invalid response: {detail}"
        case aiohttp.ClientError() | httpx.HTTPError() | OSError():
            return f"connection error: {detail}"
        case _:
            return detail
