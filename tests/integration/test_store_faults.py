"""A store that goes away under the real daemon: another process holds the write lock past
the busy timeout; the filesystem under the database fills up. The daemon logs the episode,
keeps what it holds, resumes by itself once the store is back, and loses nothing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from warcio.archiveiterator import ArchiveIterator

from fetcher.archive import read_body
from fetcher.demo import Origin

from .conftest import Fetcher, assert_counters_match, wait_until

pytestmark = pytest.mark.integration

_HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def _events(fetcher: Fetcher) -> list[str]:
    return [e["event"] for e in fetcher.log_of()]


def _assert_every_job_done_once(
    fetcher: Fetcher, origin: Origin, jobs: int, may_repeat: frozenset[str] = frozenset()
) -> None:
    """Every job done, none fetched twice but those in `may_repeat` (paths), the counters
    equal to the origin's count."""
    status = fetcher.status()
    assert (status["done"], status["running"], status["queued"]) == (jobs, 0, 0), status
    assert len(origin.stats.paths) == jobs
    repeated = {path for (_host, path), n in origin.stats.paths.items() if n > 1}
    assert repeated <= may_repeat and max(origin.stats.paths.values()) <= 2
    assert_counters_match(fetcher, origin)


@pytest.mark.sqlite_only  # SQLite's write lock; PostgreSQL's lock and restart: test_scale_out.py
def test_a_write_lock_held_past_the_busy_timeout_pauses_the_work_then_it_resumes(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Another process holds BEGIN IMMEDIATE for four times the busy timeout while the daemon
    works through a rate-limited queue: one `store.unavailable` … `store.recovered` episode,
    requests again within seconds of the release, the drain ends, every job done once, the
    counters equal the origin's count."""
    fetcher.set(db_busy_timeout=1, host_rate=25, host_concurrency=4, max_concurrency=8)
    fetcher.submit([origin.url(f"ok/{n}", n % 2) for n in range(400)])
    daemon = fetcher.start("--drain")
    assert wait_until(lambda: sum(origin.stats.requests.values()) >= 60, timeout=20)
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(fetcher.db), "4"],
        stdout=subprocess.PIPE, text=True,
    ) as locker:  # fmt: skip
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            assert locker.wait(15) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
    released = time.monotonic()
    assert daemon.wait(90) == 0
    events = _events(fetcher)
    assert events.count("store.unavailable") == 1 and events.count("store.recovered") == 1
    assert "service.crashed" not in events
    after = [t for times in origin.stats.arrivals.values() for t in times if t > released]
    assert after and min(after) - released < 5.0  # resumed within seconds of the release
    _assert_every_job_done_once(fetcher, origin, 400)


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    """A 32 MiB tmpfs of the test's own, unmounted afterwards (after the daemon is stopped:
    request this fixture before `fetcher`)."""
    where = Path(tempfile.mkdtemp(prefix="fetcher-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'mount failed'}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, capture_output=True)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def _fill(path: Path) -> int:
    """Write to `path` until the filesystem is full; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12):
            block = b"\0" * size
            while True:
                try:
                    written += out.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


@pytest.mark.sqlite_only  # the file's own filesystem
def test_a_full_filesystem_pauses_the_work_then_it_resumes_once_space_is_freed(
    small_tmpfs: Path, fetcher: Fetcher, origin: Origin
) -> None:
    """The database (and its bodies) on a small tmpfs that fills up mid-run: a clear
    `store.unavailable` line saying the disk is full, no job failed for it, work resumes when
    the space is freed, every job done; only a job whose body could not be written is fetched
    again (once), and the counters equal the origin's count."""
    fetcher.bodies = small_tmpfs / "bodies"
    fetcher.set(
        db=small_tmpfs / "fetcher.db", body_dir=fetcher.bodies, host_rate=25, host_concurrency=4
    )
    urls = [origin.url(f"large/{2000 + n}/{n}", n % 2) for n in range(300)]  # distinct bodies
    fetcher.submit(urls)
    daemon = fetcher.start("--drain")
    filler = small_tmpfs / "filler"
    try:
        assert wait_until(lambda: sum(origin.stats.requests.values()) >= 40, timeout=20)
        assert _fill(filler) > 0
        assert wait_until(lambda: "store.unavailable" in _events(fetcher), timeout=20)
        time.sleep(1.0)
        assert daemon.poll() is None  # waiting, not dead
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
    assert daemon.wait(90) == 0
    log = fetcher.log_of()
    unavailable = [e for e in log if e["event"] == "store.unavailable"]
    assert "full" in unavailable[0]["reason"]
    assert "store.recovered" in [e["event"] for e in log]
    assert not [e for e in log if e["event"] == "job.failed"]
    not_kept = frozenset(
        urlsplit(e["url"]).path
        for e in log
        if e["event"] == "job.retrying" and (e["error"] or "").startswith("body not kept")
    )
    _assert_every_job_done_once(fetcher, origin, 300, may_repeat=not_kept)
    for row in fetcher.results():  # nothing committed points at a missing or torn record
        body = read_body(fetcher.bodies, row["body_path"])
        assert body is not None and hashlib.sha256(body).hexdigest() == row["body_sha256"], row
    for path in fetcher.bodies.glob("fetcher-*.warc"):  # every file whole, as warcio reads it
        with open(path, "rb") as handle:
            assert sum(1 for _ in ArchiveIterator(handle, check_digests="raise")) > 0
