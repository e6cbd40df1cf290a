"""The core service end to end: caps, exact counters, submit's promises, status."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import sys
from datetime import datetime

import pytest

from fetcher.archive import read_body
from fetcher.demo import Origin

from .conftest import Fetcher, assert_counters_match

pytestmark = pytest.mark.integration


def test_global_and_host_caps_are_reached_and_never_exceeded(
    fetcher: Fetcher, origin: Origin
) -> None:
    """With 6 hosts of slow URLs, the origin sees at most FETCHER_MAX_CONCURRENCY requests at
    once (and that many), and at most FETCHER_HOST_CONCURRENCY per host (and that many)."""
    fetcher.set(max_concurrency=8, host_concurrency=3)
    fetcher.submit([origin.url(f"slow/150/{n}", h) for h in range(6) for n in range(12)])
    fetcher.drain()
    assert origin.stats.max_total_in_flight == 8
    assert max(origin.stats.max_in_flight.values()) <= 3
    status = fetcher.status()
    # the 72 requests all fell within the last 60 s: 72 / 60 a second, less the share of the
    # previous minute already past if they straddled a minute's turn
    assert status.pop("requests_per_s") == pytest.approx(1.2, abs=0.1)
    assert status == {
        "queued": 0, "retrying": 0, "running": 0, "done": 72, "failed": 0, "cancelled": 0,
        "oldest_queued_s": None, "recurring": 0, "next_run_in_s": None,
    }  # fmt: skip


def test_host_cap_is_reached_and_never_exceeded(fetcher: Fetcher, origin: Origin) -> None:
    """With room in the global cap, each host gets exactly FETCHER_HOST_CONCURRENCY at once."""
    fetcher.set(max_concurrency=16, host_concurrency=3)
    fetcher.submit([origin.url(f"slow/150/{n}", h) for h in range(2) for n in range(12)])
    fetcher.drain()
    assert list(origin.stats.max_in_flight.values()) == [3, 3]


def test_a_connection_is_kept_while_jobs_wait_for_its_host_and_closed_after(
    fetcher: Fetcher, origin: Origin
) -> None:
    """5 jobs for one host, 2 at a time, all claimed at once. The first three requests keep
    their connections (a job still waits), the last one says `Connection: close` (none
    waits); the fourth keeps its connection if the fifth has not started yet. The
    connections are reused: fewer than the requests."""
    fetcher.set(max_concurrency=8, host_concurrency=2)
    fetcher.submit([origin.url(f"slow/100/{n}") for n in range(5)])
    fetcher.drain()
    host = origin.host()
    closing = origin.stats.closing[host]
    assert len(closing) == 5
    assert closing[:3] == [False, False, False] and closing[-1] is True
    assert len(origin.stats.connections[host]) < 5


def test_counters_equal_what_the_origin_received(fetcher: Fetcher, origin: Origin) -> None:
    """Under concurrency, with retries, redirects, resets and errors, every host's `requests`
    equals what the origin received and the sum of its status classes and errors."""
    fetcher.set(max_concurrency=32, host_concurrency=8, max_attempts=3)
    kinds = ["ok", "status/404", "status/500", "flaky/1", "limited", "redirect/2", "reset"]
    kinds += ["truncated", "large/300000", "slow/50", f"to/{origin.host(5)}", "nolocation"]
    urls = [origin.url(f"{kinds[n % len(kinds)]}/{n}", h) for h in range(5) for n in range(60)]
    fetcher.submit(urls)
    fetcher.drain()
    assert_counters_match(fetcher, origin)
    status = fetcher.status()
    assert status["done"] + status["failed"] == len(urls)
    assert status["queued"] == status["running"] == status["retrying"] == 0
    assert len(fetcher.results()) == len(urls)


def test_every_counter_equals_the_truth_class_by_class(fetcher: Fetcher, origin: Origin) -> None:
    """Each host's counters, field by field, against what the origin sent (responses by status
    class, body bytes) and what the daemon measured for each request (its `request.done` lines:
    latency sum and maximum, the time of the last one). One attempt per job, so every response
    is in the log once."""
    fetcher.set(max_attempts=1, max_concurrency=16, host_concurrency=4, log_level="debug")
    kinds = ["ok", "status/404", "status/500", "status/503", "nolocation", "redirect/1", "reset"]
    kinds += ["slow/150", "status/204", "status/502"]  # a different number in each class
    urls = [
        origin.url(f"{kinds[(n + h) % len(kinds)]}/{n}", h) for h in range(3) for n in range(40)
    ]
    fetcher.submit(urls)  # first: a draining daemon that finds the queue empty exits at once
    proc = fetcher.start("--drain")
    assert proc.wait(120) == 0
    hops = [e for e in fetcher.log_of(0) if e["event"] == "request.done"]
    stats = fetcher.stats()
    for h in range(3):
        host = origin.host(h)
        row = stats[host]
        sent = {code: n for (where, code), n in origin.stats.statuses.items() if where == host}
        for c in (2, 3, 4, 5):
            in_class = sum(n for code, n in sent.items() if code // 100 == c)
            assert row[f"status_{c}xx"] == in_class, (c, row, sent)
        # a reset on a reused connection is sent again by aiohttp: both sends are counted
        resets = sum(1 for url in urls if f"{host}/reset/" in url)
        assert row["requests"] == origin.stats.requests[host]
        assert row["errors"] == row["requests"] - sum(sent.values()) >= resets
        assert row["bytes"] == origin.stats.body_bytes[host], (row, origin.stats.body_bytes[host])
        mine = [e for e in hops if e["host"] == host]
        answered = [e["latency_ms"] for e in mine if e["status"] is not None]
        assert len(answered) == row["requests"] - row["errors"]
        assert row["latency_avg_ms"] == pytest.approx(sum(answered) / len(answered), abs=0.11)
        assert row["latency_max_ms"] == pytest.approx(max(answered), abs=0.06)
        assert row["latency_max_ms"] >= 150  # each host had slow/150 requests
        last = max(datetime.fromisoformat(e["timestamp"]) for e in mine)
        stored = datetime.fromisoformat(row["last_request_at"])
        assert abs((stored - last).total_seconds()) < 0.5, (stored, last)


def test_submit_rejects_bad_lines_and_queues_the_rest_once(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Bad URLs are rejected one by one with a reason (exit 1); good ones are queued once."""
    good = origin.url("ok/1")
    result = fetcher.submit(
        [good, good, "ftp://x/", "# a comment", "", "http://exa mple.com/", "http://u:p@h.example/"]
    )
    assert result.returncode == 1
    rejected = [line for line in result.stderr.splitlines() if line.startswith("rejected:")]
    assert len(rejected) == 3
    assert "scheme must be http or https" in rejected[0]
    assert "u:p" not in result.stderr  # credentials are never echoed
    assert "queued 1, already queued 1, rejected 3" in result.stderr
    assert fetcher.submit([good]).returncode == 0
    assert fetcher.status()["queued"] == 1
    fetcher.drain()
    assert origin.stats.requests[origin.host()] == 1
    assert fetcher.submit([good]).returncode == 0
    assert fetcher.status()["queued"] == 1  # a finished URL may be fetched again


def test_submit_rejects_a_line_that_is_not_utf8_and_queues_the_rest(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A line of bytes that are not UTF-8, in a file, on stdin or as an argument, is rejected
    by itself with its number and its bytes shown escaped (no traceback); the lines around it
    are queued."""
    good = [origin.url(f"ok/{n}") for n in range(4)]
    bad = b"http://bad.example/\xff\xfeq"
    path = fetcher.workdir / "urls.txt"
    path.write_bytes(f"{good[0]}\n".encode() + bad + f"\n{good[1]}\n".encode())
    from_file = fetcher.cli("submit", "-f", str(path))
    command = [sys.executable, "-m", "fetcher", "submit"]
    from_stdin = subprocess.run(
        [*command, "-f", "-"], input=bad + f"\n{good[2]}\n".encode(),
        capture_output=True, env=fetcher.env, timeout=60, check=False,
    )  # fmt: skip
    from_args = subprocess.run(
        [*command, good[3], b"http://arg.example/\xff"],
        capture_output=True, env=fetcher.env, timeout=60, check=False,
    )  # fmt: skip
    assert from_file.returncode == from_stdin.returncode == from_args.returncode == 1
    assert "rejected: line 2: http://bad.example/\\xff\\xfeq: not UTF-8 (byte 0xff at 19)" in (
        from_file.stderr
    )
    assert "queued 2, already queued 0, rejected 1" in from_file.stderr
    stdin_err, args_err = from_stdin.stderr.decode(), from_args.stderr.decode()
    assert "not UTF-8" in stdin_err and "queued 1, already queued 0, rejected 1" in stdin_err
    assert "rejected: line 2: http://arg.example/\\xff: not UTF-8" in args_err
    assert "queued 1, already queued 0, rejected 1" in args_err
    for err in (from_file.stderr, stdin_err, args_err):
        assert "Traceback" not in err
    assert fetcher.status()["queued"] == 4


def test_results_and_stats_formats(fetcher: Fetcher, origin: Origin) -> None:
    """`results` prints one JSON object per job with the fields SPEC names; stats --csv and
    the table show the same hosts as --json."""
    fetcher.submit([origin.url("ok/a"), origin.url("status/404/b", 1)])
    fetcher.drain()
    rows = fetcher.results()
    assert {r["status"] for r in rows} == {200, 404}
    for row in rows:
        assert {"url", "state", "status", "bytes", "error", "attempts", "finished_at"} <= set(row)
    csv = fetcher.cli("stats", "--csv").stdout.splitlines()
    assert csv[0].startswith("host,requests") and len(csv) == 3
    table = fetcher.cli("stats").stdout
    assert origin.host(0) in table and origin.host(1) in table


def test_bodies_are_kept_in_warc_files_in_the_body_dir(fetcher: Fetcher, origin: Origin) -> None:
    """FETCHER_BODY_DIR: each body is in a WARC record there (a body past the in-memory spill
    size too), the same body once for two URLs, owner-only, nothing beside the database."""
    body_dir = fetcher.workdir / "kept"
    fetcher.set(body_dir=body_dir)
    fetcher.submit([origin.url("ok/1"), origin.url("ok/2"), origin.url("large/400000/x")])
    fetcher.drain()
    rows = {r["url"].split("/", 3)[3]: r for r in fetcher.results()}
    assert rows["ok/1"]["body_path"] == rows["ok/2"]["body_path"]
    for row in rows.values():
        data = read_body(body_dir, row["body_path"])
        assert data is not None and hashlib.sha256(data).hexdigest() == row["body_sha256"]
        assert len(data) == row["bytes"]
    assert rows["large/400000/x"]["bytes"] == 400_000
    assert stat.S_IMODE(body_dir.stat().st_mode) == 0o700
    assert not (fetcher.workdir / "bodies").exists()
    [kept] = [p for p in body_dir.rglob("*") if p.is_file()]
    assert kept.name.endswith(".warc") and stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_save_bodies_off_keeps_no_body(fetcher: Fetcher, origin: Origin) -> None:
    """FETCHER_SAVE_BODIES=false: results carry no body reference and no directory is made;
    the bytes are still counted."""
    fetcher.set(save_bodies="false")
    fetcher.submit([origin.url("ok/1"), origin.url("large/400000/x")])
    fetcher.drain()
    rows = fetcher.results()
    assert [(r["body_sha256"], r["body_path"]) for r in rows] == [(None, None)] * 2
    assert sorted(r["bytes"] for r in rows) == [1024, 400_000]
    assert not (fetcher.workdir / "bodies").exists()


def test_the_demo_runs_and_its_table_equals_what_its_origin_received(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """`make demo` at a small size: exit 0; for each host the table's requests equal the
    origin's own count, and its /private/ pages were refused by robots.txt. With `--postgres`,
    three daemons share the queue, each finishing some of it."""
    args = ["demo", "--hosts", "3", "--urls", "16"]
    if backend == "postgres":
        args += ["--postgres", request.getfixturevalue("postgres_url")]
    result = subprocess.run(
        [sys.executable, "-m", "fetcher", *args],
        capture_output=True, text=True, timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    received = {host: int(n) for host, n in re.findall(r"'(127\.0\.0\.\d+:\d+)': (\d+)", out)}
    rows = [line.split() for line in out.splitlines() if line.startswith("127.0.0.")]
    assert len(received) == 3 and len(rows) == 3
    if backend == "postgres":
        [shares] = re.findall(r"by 3 daemons \(jobs each: ([\d, ]+)\)", out)
        assert sum(map(int, shares.split(", "))) == 3 * 16
    for row in rows:
        assert int(row[1]) == received[row[0]], row
        assert row[-1] == "1"  # robots ✗: the one /private/ URL of 16
