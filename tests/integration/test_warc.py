"""Kept bodies as WARC files, read back with warcio (the reference reader): every record parses,
every payload digest holds, bodies equal what a real loopback server sent, duplicates and 304s
are revisits, a killed daemon's torn record is cut, files rotate and retention removes them whole.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator

from fetcher import warc
from fetcher.archive import OPEN, read_body
from fetcher.demo import Origin

from .conftest import Fetcher, wait_until


def _page(path: str) -> bytes:
    """What the origin's /encoded/… sends, decoded."""
    return f"<p>{path}</p>\n".encode() * 300


def _records(body_dir: Path) -> list[dict[str, Any]]:
    """Every record of every WARC file, parsed by warcio with its digests checked."""
    records = []
    files = sorted(p for p in body_dir.iterdir() if p.name.startswith("fetcher-"))
    for path in files:
        if path.name.endswith(OPEN):
            continue
        with open(path, "rb") as handle:
            walk = ArchiveIterator(handle, check_digests="raise")
            for record in walk:
                http, payload = record.http_headers, record.raw_stream.read()
                records.append({
                    "file": path.name, "at": f"{path.name}#{walk.get_record_offset()}",
                    "type": record.rec_type, "fields": dict(record.rec_headers.headers),
                    "status": http.get_statuscode() if http else None,
                    "http": dict(http.headers) if http else {},
                    "payload": payload,
                })  # fmt: skip
    return records


def _body(fetcher: Fetcher, job_id: int) -> bytes:
    """`fetcher body ID`'s stdout as bytes."""
    done = subprocess.run(
        [sys.executable, "-m", "fetcher", "body", str(job_id)],
        capture_output=True, env=fetcher.env, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.mark.parametrize("gzipped", [False, True], ids=["warc", "warc.gz"])
def test_every_record_reads_back_as_the_server_sent_it(
    fetcher: Fetcher, origin: Origin, gzipped: bool
) -> None:
    """Plain, gzip (chunked) and brotli answers, a body past the spill size, a duplicate, a
    POST and a 304: warcio parses every record and checks every digest; the decoded body equals
    what the server sent, the transfer headers are kept as X-Crawler-…, duplicates and the 304
    are revisits of the original, the POST has its request record (secrets not kept), and
    `fetcher body ID` gives each body byte for byte."""
    fetcher.set(warc_gzip=str(gzipped).lower())
    paths = ["/encoded/plain/a", "/encoded/gzip/b", "/encoded/br/c", "/ok/1", "/ok/2", "/etag/e"]
    jobs = [json.dumps({"url": origin.url(p.lstrip("/"))}) for p in paths]
    jobs.append(json.dumps({"url": origin.url("large/400000/big")}))
    jobs.append(json.dumps({
        "url": origin.url("ok/post"), "method": "POST", "body": "name=value",
        "headers": {"Authorization": "Bearer sekrit-value", "X-Trace": "t1"},
    }))  # fmt: skip
    submitted = fetcher.cli("submit", "-f", "-", "--json", stdin="\n".join(jobs) + "\n")
    assert submitted.returncode == 0, submitted.stderr
    fetcher.drain()
    again = fetcher.cli("submit", "-f", "-", stdin=origin.url("etag/e") + "\n")  # a 304 now
    assert again.returncode == 0, again.stderr
    fetcher.drain()

    results = {r["url"].split("/", 3)[3]: r for r in fetcher.results()}
    assert all(r["state"] == "done" for r in results.values()), results
    records = _records(fetcher.bodies)
    suffix = ".warc.gz" if gzipped else ".warc"
    assert {r["file"] for r in records} and all(r["file"].endswith(suffix) for r in records)
    assert not list(fetcher.bodies.glob("*" + OPEN))  # closed at the daemon's exit
    responses = {r["fields"]["WARC-Target-URI"]: r for r in records if r["type"] == "response"}
    for coding in ("plain", "gzip", "br"):
        path = f"/encoded/{coding}/{'abc'[('plain', 'gzip', 'br').index(coding)]}"
        record = responses[origin.url(path.lstrip("/"))]
        assert record["payload"] == _page(path)
        assert record["fields"]["WARC-IP-Address"] == origin.host().rsplit(":", 1)[0]
        if coding != "plain":
            assert record["http"]["X-Crawler-Content-Encoding"] == coding
            assert "Content-Encoding" not in record["http"]
            assert record["http"]["Content-Length"] == str(len(_page(path)))
    assert responses[origin.url("encoded/gzip/b")]["http"]["X-Crawler-Transfer-Encoding"]
    assert len(responses[origin.url("large/400000/big")]["payload"]) == 400_000

    at = {r["at"]: r for r in records}
    for key, row in results.items():  # each result points at the response with its payload
        original = at[row["body_path"]]
        assert original["type"] == "response", key
        assert original["fields"]["WARC-Payload-Digest"] == f"sha256:{row['body_sha256']}", key
    revisits = [r for r in records if r["type"] == "revisit"]
    duplicate = next(r for r in revisits if r["fields"]["WARC-Target-URI"] == origin.url("ok/2"))
    assert duplicate["fields"]["WARC-Profile"] == warc.IDENTICAL_PAYLOAD
    assert duplicate["fields"]["WARC-Refers-To-Target-URI"] == origin.url("ok/1")
    first = at[results["ok/1"]["body_path"]]
    assert duplicate["fields"]["WARC-Refers-To"] == first["fields"]["WARC-Record-ID"]
    assert results["ok/2"]["body_path"] == results["ok/1"]["body_path"]
    [not_modified] = [r for r in revisits if r["status"] == "304"]
    assert not_modified["fields"]["WARC-Target-URI"] == origin.url("etag/e")
    referred = at[results["etag/e"]["body_path"]]["fields"]["WARC-Record-ID"]
    assert not_modified["fields"]["WARC-Refers-To"] == referred

    [request] = [r for r in records if r["type"] == "request"]
    [post] = [r for r in revisits if r["fields"]["WARC-Target-URI"] == origin.url("ok/post")]
    assert request["fields"]["WARC-Concurrent-To"] == post["fields"]["WARC-Record-ID"]
    assert request["payload"] == b"name=value" and request["http"]["X-Trace"] == "t1"
    assert request["http"]["Authorization"] == "***"
    files = [p.read_bytes() for p in fetcher.bodies.glob("fetcher-*")]
    everything = b"".join(gzip.decompress(f) if gzipped else f for f in files)
    assert b"X-Trace: t1" in everything and b"sekrit-value" not in everything

    for key, row in results.items():
        body = _body(fetcher, row["id"])
        assert hashlib.sha256(body).hexdigest() == row["body_sha256"], key
        assert len(body) == row["bytes"] or key == "etag/e", key
    listing = json.loads(fetcher.cli("warc", "--json").stdout)
    assert sum(f["records"] for f in listing) == len(records)
    assert sum(f["revisit"] for f in listing) == len(revisits) == 4  # ok/2, etag/e twice, ok/post
    assert sum(f["request"] for f in listing) == 1
    assert stat.S_IMODE(fetcher.bodies.stat().st_mode) == 0o700


def test_a_killed_daemon_leaves_whole_records_and_loses_no_committed_body(
    fetcher: Fetcher, origin: Origin
) -> None:
    """SIGKILL during a burst of writes, and a torn record at the file's end (as a write cut
    short leaves it): the next daemon cuts the torn record off, the file ends at a whole record,
    every committed result's body reads back, and the jobs not committed are fetched again."""
    fetcher.set(host_concurrency=8)
    total = 400
    fetcher.submit([origin.url(f"encoded/plain/{n}", n % 2) for n in range(total)])
    daemon = fetcher.start()
    try:
        assert wait_until(lambda: sum(origin.stats.requests.values()) >= 120, timeout=30)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
    [marker] = fetcher.bodies.glob("*" + OPEN)
    torn = fetcher.bodies / marker.name[: -len(OPEN)]
    whole = torn.stat().st_size
    with open(torn, "ab") as handle:  # a record begun and never finished
        handle.write(b"WARC/1.1\r\nWARC-Type: response\r\nContent-Length: 99999\r\n\r\nHTTP/1.1 2")
    fetcher.drain()
    assert torn.stat().st_size <= whole
    assert not list(fetcher.bodies.glob("*" + OPEN))
    with open(torn, "rb") as handle:
        ends = [end for _, end, _ in warc.scan(handle, False)]
    assert ends[-1] == torn.stat().st_size  # ends at a whole record
    _all_done_every_body_kept(fetcher, total)


_FAILING_SYNC = """
import os

def _failing(fd):
    raise OSError(5, "Input/output error")

os.fdatasync = _failing
"""


def test_a_failed_sync_stops_the_daemon_before_the_commit_and_loses_nothing(
    fetcher: Fetcher, origin: Origin, tmp_path: Path
) -> None:
    """A disk that fails fdatasync (EIO: faked in the daemon's process only, by a
    sitecustomize): no result pointing into the file is committed, the daemon stops with exit
    1 and says why; started again on a sound disk, it fetches every job and every body reads
    back (the abandoned file is repaired, not trusted)."""
    total = 40
    fetcher.submit([origin.url(f"encoded/plain/eio{n}") for n in range(total)])
    daemon = _start_on_a_faulty_disk(fetcher, tmp_path, _FAILING_SYNC)
    assert daemon.wait(60) == 1
    crashed = [e for e in fetcher.last_log() if e["event"] == "service.crashed"]
    assert crashed and "Input/output error" in crashed[0]["error"]
    assert fetcher.status()["done"] == 0
    assert sum(origin.stats.requests.values()) >= 1
    fetcher.drain()
    _all_done_every_body_kept(fetcher, total)
    assert not list(fetcher.bodies.glob("*" + OPEN))


_HANGING_SYNC = """
import os
import time

def _hanging(fd):
    time.sleep(3600)

os.fdatasync = _hanging
os.fsync = _hanging
"""


def test_a_disk_that_hangs_stops_the_daemon_in_bounded_time_and_loses_nothing(
    fetcher: Fetcher, origin: Origin, tmp_path: Path
) -> None:
    """A body directory whose syncs never return (faked in the daemon's process only): the
    commit waits FETCHER_TIMEOUT, the daemon stops, and its shutdown waits for the stuck
    writer thread no longer than that again: exit 1 with the reason, instead of a daemon that
    hangs until systemd kills it. Started again on a sound disk, it does every job."""
    total = 20
    fetcher.set(timeout=2)
    fetcher.submit([origin.url(f"encoded/plain/hang{n}") for n in range(total)])
    daemon = _start_on_a_faulty_disk(fetcher, tmp_path, _HANGING_SYNC)
    assert daemon.wait(60) == 1
    reasons = [e.get("error", "") for e in fetcher.last_log() if e["level"] == "error"]
    assert any("did not answer within 2s" in reason for reason in reasons), reasons
    assert any("did not finish writing within 2s" in reason for reason in reasons), reasons
    assert fetcher.status()["done"] == 0
    fetcher.drain()
    _all_done_every_body_kept(fetcher, total)
    assert not list(fetcher.bodies.glob("*" + OPEN))


def _start_on_a_faulty_disk(
    fetcher: Fetcher, tmp_path: Path, sitecustomize: str
) -> subprocess.Popen[bytes]:
    """`fetcher run --drain` with `sitecustomize` loaded in the daemon's process only (where
    it fakes the disk's faults)."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(sitecustomize)
    path = os.pathsep.join(p for p in (str(inject), fetcher.env.get("PYTHONPATH")) if p)
    return fetcher.start("--drain", env={**fetcher.env, "PYTHONPATH": path})


def _all_done_every_body_kept(fetcher: Fetcher, total: int) -> None:
    """Every one of the `total` jobs done, its body read back as the origin sent it, every
    file parsing with every digest holding."""
    _records(fetcher.bodies)
    results = fetcher.results()
    assert len(results) == total and all(r["state"] == "done" for r in results)
    for row in results:
        path = "/" + row["url"].split("/", 3)[3]
        assert read_body(fetcher.bodies, row["body_path"]) == _page(path), row


def test_files_rotate_and_retention_removes_them_whole(fetcher: Fetcher, origin: Origin) -> None:
    """At a small FETCHER_WARC_MAX_BYTES the records spread over many files, none much past the
    size; retention removes files whose last record is past FETCHER_RETENTION_DAYS, and `fetcher
    body` then says the body is gone. A body of the layout before WARC is still served."""
    fetcher.set(warc_max_bytes=30_000)
    fetcher.submit([origin.url(f"encoded/plain/{n}") for n in range(20)])
    fetcher.drain()
    files = sorted(fetcher.bodies.glob("fetcher-*.warc"))
    assert len(files) >= 5, files
    largest_record = 30_000 + 10_000
    assert all(p.stat().st_size < largest_record for p in files)
    assert len(_records(fetcher.bodies)) == 20 + len(files)
    results = {r["url"]: r for r in fetcher.results()}

    old = time.time() - 40 * 86400
    for path in files[:2]:
        os.utime(path, (old, old))
    legacy = fetcher.bodies / "ab" / ("ab" + "0" * 62)
    legacy.parent.mkdir()
    legacy.write_bytes(b"kept before WARC")
    kept = results[origin.url("encoded/plain/19")]
    fetcher.sql(f"UPDATE results SET body_path = 'ab/{legacy.name}' WHERE job_id = {kept['id']}")
    fetcher.set(retention_days=30)
    fetcher.submit([origin.url("ok/after")])
    fetcher.drain()
    assert not files[0].exists() and not files[1].exists() and files[2].exists()
    gone = [r for r in results.values() if r["body_path"].split("#")[0] == files[0].name]
    assert gone
    answer = fetcher.cli("body", str(gone[0]["id"]))
    assert answer.returncode == 1 and "gone" in answer.stderr
    assert _body(fetcher, kept["id"]) == b"kept before WARC"


def test_an_idle_daemons_file_is_closed_past_its_age(fetcher: Fetcher, origin: Origin) -> None:
    """A daemon with nothing to fetch closes its file past FETCHER_WARC_MAX_AGE (its marker
    goes, every record parses): the file is complete for readers and for retention. The next
    body begins a new file."""
    fetcher.set(warc_max_age=1)
    daemon = fetcher.start()
    fetcher.submit([origin.url(f"encoded/plain/{n}") for n in range(3)])
    assert wait_until(lambda: fetcher.status()["done"] == 3, timeout=30)
    assert wait_until(lambda: not list(fetcher.bodies.glob("*" + OPEN)), timeout=10)
    assert daemon.poll() is None  # idle, not stopped
    [first] = fetcher.bodies.glob("fetcher-*.warc")
    closed = [e for e in fetcher.log_of(0) if e["event"] == "warc.closed"]
    assert [(e["file"], e["why"], e["bytes"]) for e in closed] == [
        (first.name, "age", first.stat().st_size)
    ]
    assert [r["type"] for r in _records(fetcher.bodies)].count("response") == 3
    fetcher.submit([origin.url("encoded/plain/later")])
    assert wait_until(lambda: fetcher.status()["done"] == 4, timeout=30)
    [later] = [r for r in fetcher.results() if r["url"].endswith("/later")]
    assert later["body_path"].split("#")[0] != first.name
    assert _body(fetcher, later["id"]) == _page("/encoded/plain/later")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    whys = [e["why"] for e in fetcher.log_of(0) if e["event"] == "warc.closed"]
    assert len(whys) == 2 and whys[1] in ("age", "shutdown")  # whichever comes first


def test_a_revalidation_whose_body_is_gone_fetches_it_whole(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Validators whose body was removed with its file are not sent: the next fetch is a plain
    GET whose 200 is kept again, not a 304 pointing at nothing."""
    fetcher.submit([origin.url("etag/g")])
    fetcher.drain()
    for path in fetcher.bodies.glob("fetcher-*"):
        path.unlink()
    fetcher.submit([origin.url("etag/g")])
    fetcher.drain()
    latest = max(fetcher.results(), key=lambda r: r["id"])
    assert latest["status"] == 200
    assert read_body(fetcher.bodies, latest["body_path"]) is not None
