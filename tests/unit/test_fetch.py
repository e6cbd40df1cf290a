"""The fetch step against respx: statuses, errors, timeouts and byte counting."""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path

import httpx
import pytest
import respx
from respx.models import SideEffectError

from fetcher.archive import read_body
from fetcher.bodies import BodyStore
from fetcher.config import Settings
from fetcher.fetch import Fetcher
from fetcher.transport import HttpxTransport
from fetcher.urls import parse_url


class RespxTransport(httpx.AsyncBaseTransport):
    """respx's routes as a transport whose responses stream from their raw bytes, as a real
    transport's do (respx pre-reads, and decodes, the responses it returns)."""

    def __init__(self, router: respx.Router) -> None:
        self._router = router

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._router.async_handler(request)
        except SideEffectError as exc:
            raise exc.origin from None
        return httpx.Response(
            response.status_code, headers=response.headers, stream=response.stream, request=request
        )


def make_fetcher(router: respx.Router, tmp_path: Path, **overrides: object) -> Fetcher:
    settings = Settings(db=tmp_path / "f.db", allow_private=True, **overrides)  # type: ignore[arg-type]
    return Fetcher(settings, HttpxTransport(RespxTransport(router)), BodyStore(tmp_path / "bodies"))


@pytest.fixture
def router() -> respx.Router:
    """A respx router that every test fills with its own routes; no request leaves it."""
    return respx.Router(assert_all_called=False)


async def test_ok_response_counts_decoded_bytes_and_files_the_body(
    router: respx.Router, tmp_path: Path
) -> None:
    """A 200 is reported with its status, decoded size, and its body's WARC record."""
    router.get("http://example.com/a").mock(return_value=httpx.Response(200, content=b"x" * 1500))
    hop = await make_fetcher(router, tmp_path).fetch(parse_url("http://example.com/a"))
    assert (hop.status, hop.bytes, hop.error, hop.refused) == (200, 1500, None, None)
    assert hop.body_path is not None and hop.body_sha256 is not None
    assert read_body(tmp_path / "bodies", hop.body_path) == b"x" * 1500
    assert hop.body_sha256 == hashlib.sha256(b"x" * 1500).hexdigest()


async def test_a_body_directory_that_hangs_ends_the_attempt_not_the_job(
    router: respx.Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's write has a deadline of its own: past it the attempt ends `body not kept`
    (tried again later), with the answer's latency, not the stalled write's."""
    router.get("http://example.com/h").mock(return_value=httpx.Response(200, content=b"x"))
    fetcher = make_fetcher(router, tmp_path)
    monkeypatch.setattr(BodyStore, "_keep", lambda *_: time.sleep(1.0))
    hop = await fetcher.fetch(parse_url("http://example.com/h"), timeout_s=0.2)
    assert hop.local_error == "body not kept: the body directory did not answer within 0.2s"
    assert hop.body_path is None and hop.latency_ms < 200


async def test_gzip_body_is_counted_decoded(router: respx.Router, tmp_path: Path) -> None:
    """`bytes` is the decoded size, not the size on the wire."""
    body = gzip.compress(b"a" * 10_000)
    router.get("http://example.com/z").mock(
        return_value=httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"})
    )
    hop = await make_fetcher(router, tmp_path).fetch(parse_url("http://example.com/z"))
    assert hop.bytes == 10_000


@pytest.mark.parametrize("status", [201, 204, 301, 404, 429, 500, 503])
async def test_every_status_is_reported_as_it_came(
    router: respx.Router, tmp_path: Path, status: int
) -> None:
    """The fetch step reports statuses; deciding what they mean is the policy's job."""
    router.get("http://example.com/s").mock(
        return_value=httpx.Response(status, headers={"Retry-After": "7", "Location": "/x"})
    )
    hop = await make_fetcher(router, tmp_path).fetch(parse_url("http://example.com/s"))
    assert hop.status == status and hop.error is None
    assert hop.retry_after == ("7" if status in (429, 503) else None)
    assert hop.location == ("/x" if status == 301 else None)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("refused"), "connect error"),
        (httpx.ConnectTimeout("slow"), "connect timeout"),
        (httpx.ReadTimeout("slow"), "read timeout"),
        (httpx.RemoteProtocolError("bad"), "invalid response"),
    ],
)
async def test_network_errors_become_reasons(
    router: respx.Router, tmp_path: Path, exc: Exception, reason: str
) -> None:
    """No response: status None and a one-line reason, never an exception."""
    router.get("http://example.com/e").mock(side_effect=exc)
    hop = await make_fetcher(router, tmp_path).fetch(parse_url("http://example.com/e"))
    assert hop.status is None
    assert hop.error is not None and hop.error.startswith(reason)


async def test_body_over_the_cap_is_refused(router: respx.Router, tmp_path: Path) -> None:
    """A body past FETCHER_MAX_BODY_BYTES ends the hop refused, its partial body discarded."""
    router.get("http://example.com/big").mock(return_value=httpx.Response(200, content=b"x" * 5000))
    fetcher = make_fetcher(router, tmp_path, max_body_bytes=1000)
    hop = await fetcher.fetch(parse_url("http://example.com/big"))
    assert hop.refused is not None and "exceeds 1000 bytes" in hop.refused.reason
    assert hop.status == 200 and hop.body_path is None


async def test_gzip_bomb_is_stopped_at_the_cap(router: respx.Router, tmp_path: Path) -> None:
    """A doubly gzipped bomb is refused without ever decoding it whole."""
    bomb = gzip.compress(gzip.compress(b"\0" * (64 * 1024 * 1024)))
    router.get("http://example.com/bomb").mock(
        return_value=httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip, gzip"})
    )
    fetcher = make_fetcher(router, tmp_path, max_body_bytes=1_000_000)
    hop = await fetcher.fetch(parse_url("http://example.com/bomb"))
    assert hop.refused is not None and "exceeds" in hop.refused.reason


async def test_codings_split_across_headers_stack_and_the_first_location_wins(
    router: respx.Router, tmp_path: Path
) -> None:
    """Two Content-Encoding headers are two codings, decoded in turn (so a bomb cannot hide
    its second layer in a second header); of two Locations, the first is followed."""
    body = gzip.compress(gzip.compress(b"b" * 3000))
    headers = [("content-encoding", "gzip"), ("CONTENT-ENCODING", "gzip")]
    router.get("http://example.com/two").mock(
        return_value=httpx.Response(200, content=body, headers=headers)
    )
    router.get("http://example.com/moved").mock(
        return_value=httpx.Response(302, headers=[("Location", "/first"), ("location", "/2nd")])
    )
    fetcher = make_fetcher(router, tmp_path)
    hop = await fetcher.fetch(parse_url("http://example.com/two"))
    assert (hop.status, hop.bytes, hop.error) == (200, 3000, None)
    hop = await fetcher.fetch(parse_url("http://example.com/moved"))
    assert (hop.status, hop.location) == (302, "/first")


async def test_user_agent_and_accept_encoding_are_sent(
    router: respx.Router, tmp_path: Path
) -> None:
    """Requests carry FETCHER_USER_AGENT and the encodings we can decode under the cap."""
    route = router.get("http://example.com/ua").mock(return_value=httpx.Response(200))
    await make_fetcher(router, tmp_path, user_agent="probe/1").fetch(
        parse_url("http://example.com/ua")
    )
    sent = route.calls.last.request
    assert sent.headers["user-agent"] == "probe/1"
    assert sent.headers["accept-encoding"] == "gzip, deflate, br"


async def test_no_cookie_carries_from_one_job_to_another(
    router: respx.Router, tmp_path: Path
) -> None:
    """A cookie one response sets is not sent with the next request (there is no jar)."""
    router.get("http://example.com/set").mock(
        return_value=httpx.Response(200, headers={"Set-Cookie": "session=secret; Path=/"})
    )
    route = router.get("http://example.com/next").mock(return_value=httpx.Response(200))
    fetcher = make_fetcher(router, tmp_path)
    await fetcher.fetch(parse_url("http://example.com/set"))
    await fetcher.fetch(parse_url("http://example.com/next"))
    assert "cookie" not in route.calls.last.request.headers


async def test_a_request_not_to_be_reused_says_connection_close(
    router: respx.Router, tmp_path: Path
) -> None:
    """reuse=False asks for `Connection: close`; by default the connection is kept."""
    route = router.get("http://example.com/a").mock(return_value=httpx.Response(200))
    fetcher = make_fetcher(router, tmp_path)
    await fetcher.fetch(parse_url("http://example.com/a"))
    await fetcher.fetch(parse_url("http://example.com/a"), reuse=False)
    sent = [call.request.headers.get("Connection") for call in route.calls]
    assert sent == [None, "close"]
