"""A local origin on loopback, for `fetcher demo`, the integration tests and the benchmark.

Every address it listens on (127.0.0.2, 127.0.0.3, …) is a host of its own to fetcher. It
counts what it receives per host (requests, in flight, arrival times), and serves well-behaved
and hostile endpoints; the first path segment says which:

    /ok/…              200 with a 1 kB body          /slow/<ms>/…      200 after <ms>
    /limited/…         429 + Retry-After: 1 on the first request of a path, then 200
    /limited-date/…    503 + Retry-After as an HTTP date (2 s) on the first request, then 200
    /throttle/…        429 without Retry-After on the first request of a path, then 200
    /pause/<s>/…       503 + Retry-After: <s> on the first request of a path, then 200
    /status/<code>/…   that status                   /flaky/<n>/…      503 n times, then 200
    /late/<ms>/<code>/…  that status after <ms>
    /large/<bytes>/…   a body of that size           /redirect/<n>/…   302 n times, then /ok/
    /to/<host:port>/…  302 to /ok/ on another host   /loop/…           302 to itself, forever
    /moved/<code>/<host:port|here>/…  a redirect of status <code> to /ok/… there
    /drip/…            one byte a second             /bomb/<mb>/…      gzip of <mb> MB of zeros
                                                     /brbomb/<mb>/…    the same in brotli
    /reset/…           the connection reset          /truncated/…      half the declared body
    /bigheader/…       a 64 kB header line           /nolocation/…     302 without Location
    /etag/…            200 with an ETag, 304 to a request that names it in If-None-Match
    /lastmod/…         200 with Last-Modified, 304 to a request with that If-Modified-Since
    /changes/<n>/…     as /etag/, but from the path's <n>th request on a new body and ETag
    /encoded/<plain|gzip|br>/…  a page that names its path, so encoded (gzip: chunked)
    /robots.txt        what `Origin.robots[host]` says (a `RobotsFile`); 404 when nothing
Every method is answered; each request's method, path, headers and body are kept in
`stats.received`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import cache
from pathlib import Path

import brotli
from aiohttp import web
from rich.console import Console

from fetcher.locations import masked

__all__ = ["Origin", "OriginStats", "Received", "RobotsFile", "run_demo"]

_BODY = (b"fetcher demo origin. " * 49)[:1024]


@dataclass
class OriginStats:
    """What the origin received, per host key (`127.0.0.2:PORT`)."""

    requests: Counter[str] = field(default_factory=Counter)
    paths: Counter[tuple[str, str]] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    arrivals: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # every request in order of arrival: (monotonic time, host, path)
    sequence: list[tuple[float, str, str]] = field(default_factory=list)
    connections: defaultdict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    # per request, in order of arrival: did it ask for `Connection: close`
    closing: defaultdict[str, list[bool]] = field(default_factory=lambda: defaultdict(list))
    # responses sent, by (host, status), and the bytes of their bodies (plain bodies only)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    body_bytes: Counter[str] = field(default_factory=Counter)
    total_in_flight: int = 0
    max_total_in_flight: int = 0
    received: list[Received] = field(default_factory=list)


@dataclass(frozen=True)
class Received:
    """One request as the origin got it."""

    host: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@cache
def _bomb(mb: int) -> bytes:
    return gzip.compress(b"\0" * (mb * 1024 * 1024), compresslevel=9)


@cache
def _brotli_bomb(mb: int) -> bytes:
    data: bytes = brotli.compress(b"\0" * (mb * 1024 * 1024), quality=5)  # ~300 bytes
    return data


@dataclass
class RobotsFile:
    """What one host's /robots.txt does: `failures` ("500", "429" or "reset") are used up one
    per request before the answer proper (`status`, `body`, after `delay_s`); `location`
    redirects; `large` streams that many bytes of comments; `bomb_mb` is a gzip bomb."""

    status: int = 200
    body: str = ""
    delay_s: float = 0.0
    failures: list[str] = field(default_factory=list)
    location: str | None = None
    large: int = 0
    bomb_mb: int = 0


_LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


class Origin:
    """The origin, run in a thread of its own with its own event loop."""

    def __init__(self, addresses: list[str], port: int = 0) -> None:
        self.addresses = addresses
        self.port = port
        self.stats = OriginStats()
        self.robots: dict[str, RobotsFile] = {}  # host key (`127.0.0.2:PORT`) → its robots.txt
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    def host(self, index: int = 0) -> str:
        return f"{self.addresses[index]}:{self.port}"

    def url(self, path: str, index: int = 0) -> str:
        return f"http://{self.host(index)}/{path.lstrip('/')}"

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = OriginStats()
            self.robots = {}

    # -- running --------------------------------------------------------------------------

    def start(self) -> Origin:
        if self.port == 0:
            self.port = _free_port(self.addresses)
        self._thread = threading.Thread(target=self._serve, name="origin", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the origin did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            future.result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._open())
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        for address in self.addresses:
            await web.TCPSite(self._runner, address, self.port, reuse_address=True).start()

    # -- endpoints ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        host = request.host
        path = request.path
        body = await request.read() if request.body_exists else b""
        seen_as = Received(host, request.method, path, dict(request.headers), body)
        with self._lock:
            self.stats.received.append(seen_as)
            s = self.stats
            s.requests[host] += 1
            s.paths[(host, path)] += 1
            seen = s.paths[(host, path)]
            s.arrivals[host].append(time.monotonic())
            s.sequence.append((s.arrivals[host][-1], host, path))
            peer = request.transport.get_extra_info("peername") if request.transport else None
            s.connections[host].add(peer[1] if peer else -1)  # a client port per connection
            s.closing[host].append(request.headers.get("Connection", "").lower() == "close")
            s.in_flight[host] += 1
            s.max_in_flight[host] = max(s.max_in_flight[host], s.in_flight[host])
            s.total_in_flight += 1
            s.max_total_in_flight = max(s.max_total_in_flight, s.total_in_flight)
        try:
            response = await self._respond(request, path.strip("/").split("/"), seen)
            if request.transport is not None and not request.transport.is_closing():
                with self._lock:
                    s.statuses[(host, response.status)] += 1
                    sent = response.body if isinstance(response, web.Response) else None
                    if isinstance(sent, bytes) and response.status not in (204, 304):
                        s.body_bytes[host] += len(sent)
            return response
        finally:
            with self._lock:
                s.in_flight[host] -= 1
                s.total_in_flight -= 1

    async def _respond(
        self, request: web.Request, parts: list[str], seen: int
    ) -> web.StreamResponse:
        kind, arg = parts[0], (parts[1] if len(parts) > 1 else "")
        if kind == "robots.txt":
            return await self._robots_txt(request)
        if kind in ("etag", "lastmod"):
            return _validated(request, kind)
        if kind == "changes":
            return _changes(request, 2 if seen >= int(arg) else 1)
        if kind == "slow":
            await asyncio.sleep(int(arg) / 1000)
        elif kind in ("limited", "throttle") and seen == 1:
            headers = {"Retry-After": "1"} if kind == "limited" else {}
            return web.Response(status=429, text="slow down", headers=headers)
        elif kind == "limited-date" and seen == 1:
            when = formatdate(time.time() + 2, usegmt=True)
            return web.Response(status=503, text="later", headers={"Retry-After": when})
        elif kind == "pause" and seen == 1:
            return web.Response(status=503, text="later", headers={"Retry-After": arg})
        elif kind == "status":
            return web.Response(status=int(arg), text=f"status {arg}")
        elif kind == "late":
            await asyncio.sleep(int(arg) / 1000)
            return web.Response(status=int(parts[2]), text=f"status {parts[2]}")
        elif kind == "flaky" and seen <= int(arg):
            return web.Response(status=503, text="try again")
        elif kind == "large":
            return await self._stream(request, int(arg))
        elif kind == "encoded":
            return await _encoded(request, arg)
        elif kind == "redirect" and int(arg) > 0:
            rest = "/".join(parts[2:])
            return _redirect(f"/redirect/{int(arg) - 1}/{rest}" if int(arg) > 1 else f"/ok/{rest}")
        elif kind == "to":
            return _redirect(f"http://{arg}/ok/{'/'.join(parts[2:])}")
        elif kind == "moved":
            there = "" if parts[2] == "here" else f"http://{parts[2]}"
            return _redirect(f"{there}/ok/{'/'.join(parts[3:])}", status=int(arg))
        elif kind == "loop":
            return _redirect(request.path)
        elif kind == "nolocation":
            return web.Response(status=302, text="no location")
        elif kind == "drip":
            return await self._drip(request)
        elif kind == "bomb":
            return web.Response(body=_bomb(int(arg)), headers={"Content-Encoding": "gzip"})
        elif kind == "brbomb":
            return web.Response(body=_brotli_bomb(int(arg)), headers={"Content-Encoding": "br"})
        elif kind == "reset":
            _reset(request)
            return web.Response()
        elif kind == "truncated":
            return await self._truncated(request)
        elif kind == "bigheader":
            return web.Response(text="big", headers={"X-Big": "x" * 65536})
        return web.Response(body=_BODY, content_type="text/plain")

    async def _robots_txt(self, request: web.Request) -> web.StreamResponse:
        spec = self.robots.get(request.host)
        if spec is None:
            return web.Response(status=404, text="no robots.txt here")
        with self._lock:
            failure = spec.failures.pop(0) if spec.failures else None
        if failure == "reset":
            _reset(request)
            return web.Response()
        if failure is not None:
            return web.Response(status=int(failure), text="not now")
        await asyncio.sleep(spec.delay_s)
        if spec.location is not None:
            return _redirect(spec.location)
        if spec.large:
            return await self._stream(request, spec.large, b"# " + b"x" * 65533 + b"\n")
        if spec.bomb_mb:
            return web.Response(body=_bomb(spec.bomb_mb), headers={"Content-Encoding": "gzip"})
        return web.Response(status=spec.status, text=spec.body)

    async def _stream(
        self, request: web.Request, size: int, chunk: bytes = b"x" * 65536
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "3600"})
        await response.prepare(request)
        for _ in range(3600):
            await response.write(b".")
            await asyncio.sleep(1)
        return response

    async def _truncated(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 500)
        _reset(request)
        return response


async def _encoded(request: web.Request, coding: str) -> web.StreamResponse:
    page = f"<p>{request.path}</p>\n".encode() * 300
    if coding == "br":
        return web.Response(body=brotli.compress(page), headers={"Content-Encoding": "br"})
    if coding != "gzip":
        return web.Response(body=page, content_type="text/html")
    response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    packed = gzip.compress(page)
    for start in range(0, len(packed), 1000):
        await response.write(packed[start : start + 1000])
    await response.write_eof()
    return response


def _redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location}, text="moved")


def _changes(request: web.Request, version: int) -> web.Response:
    """As /etag/, with a body and ETag of this version."""
    etag = f'"v{version}-{request.path}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(text=f"version {version}\n", headers={"ETag": etag})


def _validated(request: web.Request, kind: str) -> web.Response:
    """A page with a validator; 304 when the request carries it back."""
    if kind == "etag":
        etag = f'"v1-{request.path}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=_BODY, headers={"ETag": etag})
    if request.headers.get("If-Modified-Since") == _LAST_MODIFIED:
        return web.Response(status=304)
    return web.Response(body=_BODY, headers={"Last-Modified": _LAST_MODIFIED})


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # RST rather than FIN: SO_LINGER with a zero timeout
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        transport.abort()


def _free_port(addresses: list[str]) -> int:
    """A port free on every address (tried on the first, checked on the rest)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every origin address")


# -- fetcher demo ---------------------------------------------------------------------------


def _demo_urls(origin: Origin, hosts: int, per_host: int) -> list[str]:
    kinds = [
        "ok", "ok", "ok", "ok", "slow/300", "ok", "limited", "ok", "flaky/1", "status/404",
        "large/2000000", "redirect/2", "ok", "status/500", "to", "private",
    ]  # fmt: skip
    urls = []
    for h in range(hosts):
        for n in range(per_host):
            kind = kinds[n % len(kinds)]
            if kind == "to":
                kind = f"to/{origin.host((h + 1) % hosts)}"
            urls.append(origin.url(f"{kind}/{n}", h))
    return urls


def run_demo(
    *, hosts: int, urls_per_host: int, postgres: str | None = None, daemons: int = 1
) -> int:
    """Start the origin on 127.0.0.2…, submit a mix of URLs (some of them under /private/,
    which every host's robots.txt disallows), run `fetcher run --drain` on them, and show the
    stats table next to what the origin received. With `postgres` (a URL), the queue is there
    and `daemons` daemons drain it together, each a process of its own."""
    console = Console()
    addresses = [f"127.0.0.{i + 2}" for i in range(hosts)]
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-demo-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FETCHER_")},
        "FETCHER_DB": postgres or str(workdir / "fetcher.db"),
        "FETCHER_BODY_DIR": str(workdir / "bodies"),
        "FETCHER_ALLOW_PRIVATE": "true",  # the origin lives on loopback
        "FETCHER_HOST_RATE": "10",
        "FETCHER_HOST_BURST": "4",
        "FETCHER_MAX_ATTEMPTS": "3",
        "FETCHER_BACKOFF_BASE": "0.2",
        "FETCHER_LOG_LEVEL": "warning",
    }
    where = masked(postgres) if postgres else workdir
    fetcher = [sys.executable, "-m", "fetcher"]
    with Origin(addresses) as origin:
        for index in range(hosts):  # each host's robots.txt keeps fetcher out of /private/
            origin.robots[origin.host(index)] = RobotsFile(
                body="User-agent: *\nDisallow: /private/\n"
            )
        console.rule(f"origin on {', '.join(addresses)} port {origin.port}; database {where}")
        urls = "\n".join(_demo_urls(origin, hosts, urls_per_host)) + "\n"
        subprocess.run([*fetcher, "submit", "-f", "-"], input=urls, text=True, env=env, check=True)
        started = time.monotonic()
        done = _drain(fetcher, env, workdir, daemons)
        elapsed = time.monotonic() - started
        shares = f" by {daemons} daemons (jobs each: {', '.join(map(str, done))})"
        console.rule(f"drained in {elapsed:.1f} s{shares if daemons > 1 else ''}: fetcher stats")
        subprocess.run([*fetcher, "stats", "--sort", "host"], env=env, check=True)
        subprocess.run([*fetcher, "status"], env=env, check=True)
        received = dict(sorted(origin.stats.requests.items()))
    console.print("requests the origin received, per host:", received)
    if postgres:
        console.print(f"query it yourself: psql '{where}' -c 'SELECT * FROM host_stats'")
    else:
        console.print(f"query it yourself: sqlite3 {workdir}/fetcher.db 'SELECT * FROM host_stats'")
    return 0


def _drain(fetcher: list[str], env: dict[str, str], workdir: Path, daemons: int) -> list[int]:
    """`fetcher run --drain` in `daemons` processes at once; the jobs each one finished."""
    env = {**env, "FETCHER_LOG_LEVEL": "info", "FETCHER_LOG_FORMAT": "json"}
    logs = [workdir / f"daemon-{i}.log" for i in range(daemons)]
    procs = []
    for log in logs:
        with log.open("wb") as out:
            procs.append(subprocess.Popen([*fetcher, "run", "--drain"], env=env, stderr=out))
    try:
        for proc in procs:
            if proc.wait(600) != 0:
                raise subprocess.CalledProcessError(proc.returncode, proc.args)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = []
    for log in logs:
        for line in log.read_text().splitlines():
            if '"service.stopped"' in line:
                event = json.loads(line)
                done.append(int(event["done"]) + int(event["failed"]))
    return done
