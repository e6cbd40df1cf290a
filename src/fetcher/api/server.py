"""The API's server: aiohttp's, in the daemon's event loop, on a socket of its own.

aiohttp leaves the daemon's signal handlers alone (uvicorn installs its own), limits request
bodies (`client_max_size`: 413 once the body passes FETCHER_API_MAX_BODY, and at once when its
Content-Length says so), and closes a connection that has not sent a whole request within
`_IDLE_S` (its keep-alive timer runs from the connection's first byte): a client that sends
half a request holds a socket and a few kilobytes for that long, never a thread or a slot of
the fetch pipeline. Past `_MAX_CONNECTIONS` open connections, a new one is closed at once.

Every answer that is not a success is an RFC 9457 problem (`application/problem+json`).
"""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from fetcher.api.problems import Problem
from fetcher.api.routes import Api
from fetcher.errors import StoreUnavailable
from fetcher.log import get_logger

__all__ = ["ApiServer"]

_log = get_logger("fetcher.api")
_IDLE_S = 15.0  # a connection without a whole request (or idle between requests) is closed
_MAX_CONNECTIONS = 1024
_SHUTDOWN_S = 5.0  # what requests under way get once the daemon stops
_OPEN_ROUTES = frozenset({"/healthz"})  # served without the token


class ApiServer:
    """The API on `addr` (`host:port`); `token`: the bearer token every route but /healthz
    needs (None: none, and `addr` is a loopback address: `config` made sure)."""

    def __init__(self, api: Api, *, addr: str, token: str | None, max_body: int) -> None:
        self._api = api
        self._host, _, port = addr.rpartition(":")
        self._host = self._host.strip("[]")
        self._port = int(port)
        self._token = token.encode() if token else None
        self._max_body = max_body
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> None:
        app = web.Application(
            client_max_size=self._max_body, middlewares=[self._problems, self._auth]
        )
        app.add_routes(self._api.routes())
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=_IDLE_S,
            shutdown_timeout=_SHUTDOWN_S,
        )
        await runner.setup()
        self._runner = runner
        server = runner.server
        assert server is not None

        def connection() -> asyncio.Protocol:
            if len(server.connections) >= _MAX_CONNECTIONS:
                return _Refused()
            return server()

        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            connection, self._host, self._port, backlog=1024, reuse_address=True
        )
        self._api.start()
        _log.info("api.serving", addr=f"{self._host}:{self._port}", auth=self._token is not None)

    def wake(self) -> None:
        """Results committed: the long polls read again."""
        self._api.wake()

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one given for port 0)."""
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """No new connections; long polls answer now, requests under way get a few seconds;
        then the reads stop."""
        if self._listener is not None:
            self._listener.close()
        self._api.feed.close()
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
        await self._api.close()

    @web.middleware
    async def _problems(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as a problem; a store that is away is a 503 to try again."""
        try:
            return await handler(request)
        except Problem as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
            return Problem(exc.status, exc.reason, detail).response(dict(exc.headers))
        except StoreUnavailable as exc:
            _log.warning("api.store_unavailable", path=request.path, reason=exc.reason)
            problem = Problem(503, "Store unavailable", f"the queue's database: {exc.reason}")
            return problem.response({"Retry-After": "5"})
        except Exception as exc:
            _log.error("api.failed", path=request.path, error=repr(exc), exc_info=exc)
            return Problem(500, "Internal Server Error", "see the daemon's log").response()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is None or request.path in _OPEN_ROUTES:
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Problem(
                401, "Unauthorized", "Authorization: Bearer <token> is required",
                headers={"WWW-Authenticate": 'Bearer realm="fetcher"'},
            )  # fmt: skip
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Problem(
                401, "Unauthorized", "the token is not the API's",
                headers={"WWW-Authenticate": 'Bearer realm="fetcher", error="invalid_token"'},
            )  # fmt: skip
        return await handler(request)


class _Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
