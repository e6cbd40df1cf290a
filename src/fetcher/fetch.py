"""One hop of a job: send it through the transport, read the answer under a deadline and a cap.

Requests go straight to the transport (`fetcher.transport`), an httpx.Response out: no client
layer, so no cookie jar carries one job's cookies into another's request, and no per-request
cost for features a fetcher does not use. Library errors become one-line reasons here.

    Transport.send (guarded, each send counted)
      → CappedDecoder (decoded-size cap) → BodySink (in memory, spilled to disk past a budget)
all inside one `asyncio.timeout`: FETCHER_TIMEOUT is a deadline for the whole hop, not per read.
The body's WARC record is written after it (`BodyStore.keep`), so a slow disk is not the
host's fault.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

import aiohttp
import httpx

from fetcher import warc
from fetcher.bodies import BodySink, BodyStore
from fetcher.config import Settings
from fetcher.decoding import ACCEPT_ENCODING, CappedDecoder
from fetcher.errors import BodyNotKept, BodyTooLarge, Refused
from fetcher.model import REDIRECT_STATUSES, Hop, Validators
from fetcher.transport import Request, Transport, count_sends
from fetcher.urls import Target

__all__ = ["Fetcher", "reason_of"]

_NOT_URL_TEXT = re.compile(r"[^\x21-\x7e]")  # a normal-form URL is printable ASCII, no space
# no connection was made: the request never went out (a POST may be sent again)
_NOTHING_SENT = (aiohttp.ClientConnectorError, httpx.ConnectError, httpx.ConnectTimeout)


class Fetcher:
    """Fetches one hop of a job."""

    def __init__(self, settings: Settings, transport: Transport, bodies: BodyStore | None) -> None:
        self._transport = transport
        self._header_items = [
            ("User-Agent", settings.user_agent), ("Accept", "*/*"),
            ("Accept-Encoding", ACCEPT_ENCODING),
        ]  # fmt: skip
        self._closing_items = [*self._header_items, ("Connection", "close")]
        self._bodies = bodies
        self._timeout_s = settings.timeout
        self._max_body_bytes = settings.max_body_bytes

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def fetch(
        self,
        target: Target,
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        timeout_s: float | None = None,
        keep_body: bool = True,
        reuse: bool = True,
        validators: Validators | None = None,
        collect: bytearray | None = None,
        max_bytes: int | None = None,
    ) -> Hop:
        """Send one request to `target` (`headers` over fetcher's own of the same name) and
        read its response; never raises for the network's sake. `timeout_s` is its deadline
        (FETCHER_TIMEOUT by default). With `reuse` False the request says `Connection: close`:
        no next request needs the connection, so neither side keeps it open idle. With
        `validators` the request is conditional, and a 304 points at the body kept before.
        `collect` receives the decoded body in memory, at most `max_bytes` of it (instead of
        FETCHER_MAX_BODY_BYTES)."""
        sends = count_sends()
        started = time.perf_counter()
        wall = time.time()
        hop = Hop(target, 0, 0.0)
        sink, validators = self._sink(collect, keep_body, validators)
        request = Request(method, target.url, self._headers(reuse, headers, validators), body)
        deadline_s = timeout_s or self._timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                capture = await self._exchange(
                    hop, sink, request, max_bytes or self._max_body_bytes, wall
                )
            hop.latency_ms = (time.perf_counter() - started) * 1000.0  # the answer, not its record
            if hop.status == 304 and validators is not None:
                hop.body_sha256, hop.body_path = validators.body_sha256, validators.body_path
            if isinstance(sink, BodySink):
                await self._keep(hop, sink, capture, validators, deadline_s)
        except Refused as exc:
            hop.refused = exc
        except BodyNotKept as exc:
            hop.local_error = exc.reason
        except aiohttp.ServerTimeoutError as exc:  # a connect or read timeout: before the
            hop.error = reason_of(exc)  # deadline's TimeoutError, which it also is
            hop.unsent = isinstance(exc, aiohttp.ConnectionTimeoutError)
        except TimeoutError:
            hop.error = f"timeout: no complete response within {deadline_s:g}s"
        except (httpx.HTTPError, aiohttp.ClientError, OSError, ValueError) as exc:
            hop.error = reason_of(exc)
            hop.unsent = hop.unsent or isinstance(exc, _NOTHING_SENT)
        finally:
            hop.sends = sends[0]
            hop.latency_ms = hop.latency_ms or (time.perf_counter() - started) * 1000.0
            if isinstance(sink, BodySink) and not sink.handed:
                sink.discard()
        if hop.error is not None:
            hop.status = None  # a body cut short is no response
        return hop

    def _sink(
        self, collect: bytearray | None, keep_body: bool, validators: Validators | None
    ) -> tuple[BodySink | _Collector | None, Validators | None]:
        """Where the body goes, and the validators still worth sending."""
        if collect is not None:
            return _Collector(collect), validators
        if self._bodies is None or not keep_body:
            return None, validators
        if validators is not None and not self._bodies.holds(validators.body_path):
            validators = None  # its body is gone (retention): fetch it whole again
        return self._bodies.sink(), validators

    def _headers(
        self,
        reuse: bool,
        own: Sequence[tuple[str, str]],
        validators: Validators | None,
    ) -> Sequence[tuple[str, str]]:
        headers: Sequence[tuple[str, str]] = self._header_items if reuse else self._closing_items
        if own:  # a job's header replaces fetcher's of the same name (Accept, User-Agent…)
            names = {name.lower() for name, _ in own}
            headers = [*(h for h in headers if h[0].lower() not in names), *own]
        if validators is not None:
            headers = [*headers, *_conditions(validators)]
        return headers

    async def _exchange(
        self,
        hop: Hop,
        sink: BodySink | _Collector | None,
        request: Request,
        max_bytes: int,
        wall: float,
    ) -> warc.Capture:
        if _NOT_URL_TEXT.search(request.url):  # a row put in the queue by hand, not by `submit`
            hop.unsent = True
            raise ValueError(f"not a URL as fetcher stores them: {request.url[:200]!r}")
        response = await self._transport.send(request)
        try:
            hop.status = response.status_code
            encoding = _read_headers(hop, response.headers.raw)
            decoder = CappedDecoder(encoding, max_bytes)
            stream = response.stream  # as it came: aiter_raw adds a layer a chunk
            if not isinstance(stream, httpx.AsyncByteStream):
                raise TypeError("the transport gave a response that cannot be read async")
            async for raw in stream:
                for piece in decoder.feed(raw):
                    if sink is not None:
                        sink.write(piece)
                hop.bytes = decoder.decoded
        except BodyTooLarge as exc:
            hop.bytes = max_bytes
            raise Refused(exc.reason) from None
        finally:
            await response.aclose()
        return warc.Capture(
            request.url, wall, response.extensions.get("peer"), response.status_code,
            response.reason_phrase, response.http_version, response.headers.raw,
            request.method, request.headers, request.body,
        )  # fmt: skip

    async def _keep(
        self,
        hop: Hop,
        sink: BodySink,
        capture: warc.Capture,
        validators: Validators | None,
        deadline_s: float,
    ) -> None:
        """The body's record (a 304's: a revisit of the body the validators came with), within
        a deadline of its own: a body directory that hangs holds no job for ever."""
        assert self._bodies is not None
        if hop.status == 304:
            if validators is not None:
                await self._bodies.revisit(capture, validators, deadline_s)
        elif hop.location is None:
            hop.body_sha256, hop.body_path = await self._bodies.keep(sink, capture, deadline_s)


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
        elif name == b"content-type" and hop.content_type is None:
            hop.content_type = value.decode("latin-1")[:200]
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


def reason_of(exc: BaseException) -> str:
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
