"""Hostile input against the real daemon: private destinations, bombs, drips, loops, resets."""

from __future__ import annotations

import socket
import time

import pytest

from fetcher.archive import read_body
from fetcher.demo import Origin

from .conftest import Fetcher, RawListener, assert_counters_match, events, peak_rss_kb

_ALONE = "127.0.0.15"  # an address of this test's own (not the shared origin's)

pytestmark = pytest.mark.integration


def test_private_policy_sends_nothing_to_loopback_in_any_form(
    fetcher: Fetcher, origin: Origin
) -> None:
    """With FETCHER_ALLOW_PRIVATE=false, jobs naming the loopback origin in any form fail
    `blocked destination` and the origin receives zero requests."""
    fetcher.set(allow_private="false")
    port = origin.port
    forms = ["127.0.0.2", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "localhost",
             "[::ffff:127.0.0.1]", "[::1]", "127.0.0.3"]  # fmt: skip
    fetcher.submit([f"http://{form}:{port}/ok/{i}" for i, form in enumerate(forms)])
    fetcher.submit([origin.url(f"to/{origin.host(1)}/y")])
    fetcher.drain()
    assert sum(origin.stats.requests.values()) == 0
    results = fetcher.results()
    assert len(results) == len(forms) + 1
    for row in results:
        assert row["state"] == "failed" and row["error"].startswith("blocked destination"), row
        assert row["attempts"] == 1


def test_huge_body_and_bombs_fail_with_small_memory(fetcher: Fetcher, origin: Origin) -> None:
    """A 50 MB body, a 200 MB gzip bomb and a 200 MB brotli bomb under a 1 MB cap all end
    failed; the daemon's peak memory is within 25 MB of a daemon's that fetched one small
    page (measured first, in the same run): none of them was held whole."""
    fetcher.set(max_body_bytes=1_000_000, max_attempts=2)
    fetcher.submit([origin.url("ok/baseline")])
    baseline = peak_rss_kb(fetcher.drain())
    urls = ["large/50000000/a", "bomb/200/b", "brbomb/200/d", "ok/c"]
    fetcher.submit([origin.url(u) for u in urls])
    peak = peak_rss_kb(fetcher.drain())
    assert 0 < baseline <= peak < baseline + 25 * 1024, (baseline, peak)
    results = {r["url"].rsplit("/", 1)[1]: r for r in fetcher.results()}
    for key in "abd":
        assert results[key]["state"] == "failed"
        assert results[key]["error"] == "body exceeds 1000000 bytes"
        assert results[key]["attempts"] == 1
    assert results["c"]["state"] == "done"


def test_a_drip_is_cut_at_the_deadline(fetcher: Fetcher, origin: Origin) -> None:
    """A server sending one byte a second is cut off at FETCHER_TIMEOUT for the whole request."""
    fetcher.set(timeout=1.5, max_attempts=1)
    fetcher.submit([origin.url("drip/x")])
    result = fetcher.drain(timeout=30)
    [row] = fetcher.results()
    assert row["state"] == "failed" and "timeout" in row["error"]
    [job] = [e for e in events(result.stderr) if e["event"] == "job.failed"]
    assert 1400 <= job["latency_ms"] <= 2500


def test_a_redirect_loop_stops_at_the_limit(fetcher: Fetcher, origin: Origin) -> None:
    """A redirect loop ends failed `too many redirects` after FETCHER_MAX_REDIRECTS + 1 requests."""
    fetcher.set(max_redirects=4)
    fetcher.submit([origin.url("loop/x")])
    fetcher.drain()
    [row] = fetcher.results()
    assert row["state"] == "failed" and row["error"] == "too many redirects"
    assert origin.stats.requests[origin.host()] == 5


def test_resets_truncation_and_bad_headers_are_errors_and_the_daemon_survives(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Resets, truncated bodies and oversized headers end their attempts as errors, counted;
    the daemon goes on with the rest and drains."""
    fetcher.set(max_attempts=2)
    fetcher.submit([origin.url(f"{kind}/{n}") for kind in ("reset", "truncated", "bigheader")
                    for n in range(3)] + [origin.url("ok/fine")])  # fmt: skip
    fetcher.drain()
    rows = {r["url"].split("/", 3)[3]: r for r in fetcher.results()}
    assert rows["ok/fine"]["state"] == "done"
    for kind in ("reset", "truncated", "bigheader"):
        row = rows[f"{kind}/0"]
        assert row["state"] == "failed" and row["attempts"] == 2, row
    assert "truncated body" in rows["truncated/0"]["error"]
    assert "invalid response" in rows["bigheader/0"]["error"]
    stats = fetcher.stats()[origin.host()]
    assert stats["errors"] >= 18 and stats["last_status"] in (None, 200)
    assert_counters_match(fetcher, origin)


def test_a_refused_a_silent_and_a_hanging_up_host_fail_with_their_reasons(
    fetcher: Fetcher,
) -> None:
    """Nothing listening, a host that never answers the SYN, one that hangs up without a
    response: each job ends `failed` with its own reason, the silent one after
    FETCHER_CONNECT_TIMEOUT (the drain ends long before the 60 s request deadline), and every
    send is counted."""
    fetcher.set(max_attempts=1, connect_timeout=0.5, timeout=60, lease_s=125)
    with socket.socket() as free:
        free.bind((_ALONE, 0))
        refused_port = free.getsockname()[1]
    silent, hang_up = RawListener(_ALONE, full=True), RawListener(_ALONE, full=False)
    try:
        fetcher.submit(
            [f"http://{_ALONE}:{port}/x" for port in (refused_port, silent.port, hang_up.port)]
        )
        started = time.monotonic()
        fetcher.drain(timeout=50)
        took = time.monotonic() - started
    finally:
        silent.close()
        hang_up.close()
    errors = {int(r["url"].split(":")[2].split("/")[0]): r["error"] for r in fetcher.results()}
    assert errors[refused_port].startswith("gave up after 1 attempts: connect error:")
    assert errors[silent.port] == "gave up after 1 attempts: connect timeout"
    assert errors[hang_up.port] == (
        "gave up after 1 attempts: connection closed by the server before a response"
    )
    assert took < 50
    stats = fetcher.stats()
    assert (
        stats[f"{_ALONE}:{refused_port}"]["errors"]
        == stats[f"{_ALONE}:{silent.port}"]["errors"]
        == 1
    )
    assert stats[f"{_ALONE}:{hang_up.port}"]["errors"] == hang_up.accepted >= 1


def test_compressed_bodies_under_the_cap_are_decoded_whole(
    fetcher: Fetcher, origin: Origin
) -> None:
    """1 MB of zeros in gzip and in brotli (each one chunk of a few hundred bytes on the wire):
    every decoded byte is counted and kept, the last piece included."""
    fetcher.submit([origin.url("bomb/1/g"), origin.url("brbomb/1/b")])
    fetcher.drain()
    for row in fetcher.results():
        assert (row["state"], row["bytes"]) == ("done", 1024 * 1024), row
        assert read_body(fetcher.bodies, row["body_path"]) == b"\0" * 1024 * 1024
