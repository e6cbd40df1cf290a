"""WARC records as fetcher builds and reads them, checked with warcio; a store's files across
rotation, a failed write and a torn end, without a daemon."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from warcio.archiveiterator import ArchiveIterator

from fetcher import archive, warc
from fetcher.archive import repair
from fetcher.batch import Batch
from fetcher.bodies import BodyStore
from fetcher.config import Settings
from fetcher.diskthread import Deadlines
from fetcher.errors import BodyNotKept
from fetcher.guarded import GuardedQueue
from fetcher.model import JobState, Outcome
from fetcher.recorder import Recorder
from fetcher.supervisor import StoreHealth
from fetcher.systemd import Notifier
from tests.memory_queue import MemoryQueue

CAPTURE = warc.Capture(
    url="http://example.com/a?b=1", started=1_796_000_000.25, peer="93.184.216.34", status=200,
    reason="OK", version="HTTP/1.1",
    headers=[(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip"),
             (b"Content-Length", b"31")],
    method="POST", request_headers=[("X-Api-Key", "s3cret"), ("Accept", "*/*")],
    request_body=b"q=1",
)  # fmt: skip


def _response(payload: bytes, gzipped: bool = False) -> bytes:
    digest = hashlib.sha256(payload).hexdigest()
    head = warc.response_head(CAPTURE, warc.record_id(), digest, len(payload), "<urn:uuid:x>")
    record = head + payload + warc.END
    return warc.gzip_member(record) if gzipped else record


@pytest.mark.parametrize("gzipped", [False, True])
def test_records_parse_with_warcio_and_read_back(gzipped: bool) -> None:
    """A response whose payload came encoded: warcio checks its digest and sees the payload
    stored (decoded); the transfer headers are renamed; fetcher's reader finds it by offset."""
    payload = b"<html>" + os.urandom(3000) + b"</html>"
    first, second = _response(payload, gzipped), _response(b"", gzipped)
    data = first + second
    records = list(ArchiveIterator(io.BytesIO(data), check_digests="raise"))
    assert [r.rec_type for r in records] == ["response", "response"]
    walk = ArchiveIterator(io.BytesIO(data), check_digests="raise")
    record = next(iter(walk))
    assert record.raw_stream.read() == payload
    http = dict(record.http_headers.headers)
    assert http["X-Crawler-Content-Encoding"] == "gzip" and "Content-Encoding" not in http
    assert http["X-Crawler-Content-Length"] == "31" and http["Content-Length"] == str(len(payload))
    assert record.rec_headers.get_header("WARC-IP-Address") == "93.184.216.34"
    back = warc.read_record(io.BytesIO(data), len(first), gzipped)
    assert back.type == "response" and warc.http_payload(back.block) == b""
    assert warc.http_payload(warc.read_record(io.BytesIO(data), 0, gzipped).block) == payload
    assert [(o, e) for o, e, _ in warc.scan(io.BytesIO(data), gzipped)] == [
        (0, len(first)), (len(first), len(data))
    ]  # fmt: skip


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_torn_end_is_not_a_record(gzipped: bool) -> None:
    """scan stops before a record cut short, and read_record refuses it."""
    whole, torn = _response(b"a" * 500, gzipped), _response(b"b" * 500, gzipped)[:-7]
    data = whole + torn
    assert [e for _, e, _ in warc.scan(io.BytesIO(data), gzipped)] == [len(whole)]
    with pytest.raises(ValueError, match=r"torn|no record"):
        warc.read_record(io.BytesIO(data), len(whole), gzipped)


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_header_past_4_kb_is_a_whole_record(gzipped: bool) -> None:
    """A revisit names two URLs of up to 4,096 characters: its header passes 4 kB, and it is
    still a whole record to scan (which repair trusts) and to the readers."""
    long_url = "http://example.com/" + "a" * 4070
    original = warc.Original("f.warc#10", "<urn:uuid:o>", long_url, "2026-01-01Z")
    capture = warc.Capture(long_url, 1.0, None, 304, "Not Modified", "HTTP/1.1", [])
    revisit = warc.revisit_record(capture, "<urn:uuid:v>", "ab" * 32, original, "<urn:uuid:x>")
    first = warc.gzip_member(revisit) if gzipped else revisit
    data = first + _response(b"after", gzipped)
    assert [e for _, e, _ in warc.scan(io.BytesIO(data), gzipped)] == [len(first), len(data)]
    assert warc.read_fields(io.BytesIO(data), 0, gzipped)["WARC-Refers-To-Target-URI"] == long_url
    assert warc.read_record(io.BytesIO(data), 0, gzipped).type == "revisit"


def test_request_and_revisit_records() -> None:
    """A request record keeps the body and no secret; a revisit names its original."""
    original = warc.Original("f.warc#10", "<urn:uuid:o>", "http://example.com/", "2026-01-01Z")
    request = warc.request_record(CAPTURE, "<urn:uuid:r>", "<urn:uuid:x>")
    revisit = warc.revisit_record(CAPTURE, "<urn:uuid:v>", "ab" * 32, original, "<urn:uuid:x>")
    records = list(ArchiveIterator(io.BytesIO(request + revisit), check_digests="raise"))
    assert b"s3cret" not in request and b"X-Api-Key: ***" in request
    assert request.startswith(b"WARC/1.1") and b"POST /a?b=1 HTTP/1.1\r\n" in request
    assert records[0].rec_headers.get_header("WARC-Concurrent-To") == "<urn:uuid:r>"
    assert records[1].rec_headers.get_header("WARC-Refers-To") == "<urn:uuid:o>"
    assert records[1].rec_headers.get_header("WARC-Profile") == warc.IDENTICAL_PAYLOAD


async def _keep(store: BodyStore, payload: bytes) -> tuple[str, str]:
    sink = store.sink()
    sink.write(payload)
    return await store.keep(sink, CAPTURE)


async def test_the_store_rotates_dedupes_and_serves_by_body_path(tmp_path: Path) -> None:
    """Past max_bytes a new file is begun; a payload kept in the current file is a revisit that
    points at it; a body past the spill size reads back whole."""
    store = BodyStore(tmp_path, max_bytes=8192)
    big = os.urandom(400_000)
    with capture_logs() as logs:
        kept = [await _keep(store, payload) for payload in (b"one", b"one", big, b"two")]
        store.close()
    assert [e["why"] for e in logs if e["event"] == "warc.closed"] == ["size", "shutdown"]
    assert kept[0] == kept[1]  # the duplicate points at the original
    assert archive.read_body(tmp_path, kept[2][1]) == big
    assert hashlib.sha256(big).hexdigest() == kept[2][0]
    files = archive.warc_files(tmp_path)
    assert len(files) == 2 and not any(f.open for f in files)
    counts = [archive.count_records(tmp_path / f.name) for f in files]
    assert [c["revisit"] for c in counts] == [1, 0] and [c["request"] for c in counts] == [3, 1]
    assert not os.listdir(tmp_path / "tmp")  # no spill file left


async def test_a_file_past_its_age_is_closed_at_the_next_record_and_when_idle(
    tmp_path: Path,
) -> None:
    """Past max_age_s a file is closed without waiting for a record (`close_if_old`, which
    housekeeping calls): an idle daemon's file becomes complete, as retention needs; a younger
    file stays open. A record that finds its file past the age closes it after itself."""
    store = BodyStore(tmp_path, max_age_s=0.3)
    _, first = await _keep(store, b"one")
    store.close_if_old()
    await store.durable()  # the writer thread has done what was posted before
    assert [f.open for f in archive.warc_files(tmp_path)] == [True]
    await asyncio.sleep(0.35)
    store.close_if_old()
    await store.durable()
    assert [f.open for f in archive.warc_files(tmp_path)] == [False]
    await _keep(store, b"two")
    await asyncio.sleep(0.35)
    await _keep(store, b"three")
    assert [f.open for f in archive.warc_files(tmp_path)] == [False, False]
    store.close()
    counts = [archive.count_records(tmp_path / f.name) for f in archive.warc_files(tmp_path)]
    assert [c["response"] for c in counts] == [1, 2]
    assert archive.read_body(tmp_path, first) == b"one"


async def test_a_rotation_whose_sync_fails_lets_no_later_commit_claim_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file closed past its size is fsynced; when that fails, what it held is unknown, as
    with a failed fdatasync: `durable` raises from then on, so the results of its records
    written since the last commit are never committed (the daemon stops, they are fetched
    again)."""
    store = BodyStore(tmp_path, max_bytes=8192)
    await _keep(store, b"first")
    monkeypatch.setattr(os, "fsync", _input_output_error)
    with pytest.raises(BodyNotKept, match="Input/output error"):
        await _keep(store, os.urandom(10_000))  # past max_bytes: the file is closed
    monkeypatch.undo()
    with pytest.raises(OSError, match="Input/output error"):
        await store.durable()
    store.close()


async def _settled(store: BodyStore) -> None:
    """Once the writer thread has done everything handed to it before (it works in order)."""
    await store.keep(store.sink(), CAPTURE)


async def test_bodies_stay_in_memory_within_the_budget_and_spill_past_it(
    tmp_path: Path,
) -> None:
    """Bodies in flight share one memory budget: within it a body is never written to a
    temporary file (it is written once, into its record); the body that would pass it spills,
    and still reads back whole; a kept body gives its share back."""
    store = BodyStore(tmp_path, memory_bytes=600_000)
    spilled = tmp_path / "tmp"
    first, second = store.sink(), store.sink()
    one, two = os.urandom(300_000), os.urandom(400_000)
    for at in range(0, len(one), 10_000):
        first.write(one[at : at + 10_000])
    await _settled(store)
    assert not os.listdir(spilled)
    for at in range(0, len(two), 10_000):
        second.write(two[at : at + 10_000])
    extra, more = store.sink(), os.urandom(290_000)  # what the spilling body held is free again
    for at in range(0, len(more), 10_000):
        extra.write(more[at : at + 10_000])
    await _settled(store)
    assert len(os.listdir(spilled)) == 1  # the second body's
    kept = [await store.keep(sink, CAPTURE) for sink in (first, second, extra)]
    third = store.sink()  # the budget is whole again: 590 kB stay in memory
    payload = os.urandom(590_000)
    for at in range(0, len(payload), 10_000):
        third.write(payload[at : at + 10_000])
    await _settled(store)
    assert not os.listdir(spilled)
    kept.append(await store.keep(third, CAPTURE))
    store.close()
    for body, (digest, path) in zip((one, two, more, payload), kept, strict=True):
        assert archive.read_body(tmp_path, path) == body
        assert digest == hashlib.sha256(body).hexdigest()


async def test_spilling_shows_while_it_happens(tmp_path: Path) -> None:
    """The body past the budget goes to a temporary file as it comes (not at its end)."""
    store = BodyStore(tmp_path, memory_bytes=100_000)
    sink = store.sink()
    for _ in range(40):
        sink.write(os.urandom(10_000))
    await _settled(store)
    assert len(os.listdir(tmp_path / "tmp")) == 1
    sink.discard()
    await _settled(store)
    assert not os.listdir(tmp_path / "tmp")
    store.close()


async def test_a_dropped_body_gives_its_memory_back(tmp_path: Path) -> None:
    """A body dropped before it was kept (the fetch failed) frees its share of the budget."""
    store = BodyStore(tmp_path, memory_bytes=300_000)
    for _ in range(3):
        sink = store.sink()
        for _ in range(29):
            sink.write(os.urandom(10_000))
        await _settled(store)
        assert not os.listdir(tmp_path / "tmp")
        sink.discard()
    store.close()


@pytest.mark.parametrize("piece", [1, 4_000, 65_536, 300_000])
async def test_the_digest_is_the_bodys_whatever_its_pieces(tmp_path: Path, piece: int) -> None:
    """Small bodies are hashed by the writer thread, large ones in steps as they come, many
    tiny pieces joined: the digest is the whole body's either way."""
    store = BodyStore(tmp_path)
    body = os.urandom(1_000_003 if piece > 1 else 5_000)
    sink = store.sink()
    for at in range(0, len(body), piece):
        sink.write(body[at : at + piece])
    digest, path = await store.keep(sink, CAPTURE)
    store.close()
    assert digest == hashlib.sha256(body).hexdigest()
    assert archive.read_body(tmp_path, path) == body


async def test_a_failed_write_is_cut_off_and_the_file_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (ENOSPC) raises BodyNotKept and leaves no partial record:
    the next record lands where it would have, and the file stays whole."""
    store = BodyStore(tmp_path)
    await _keep(store, b"first")
    real_writev = os.writev

    def failing(fd: int, parts: list[bytes]) -> int:  # the first pieces go out, then ENOSPC
        real_writev(fd, parts[:2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", failing)
    with pytest.raises(BodyNotKept):
        await _keep(store, b"lost" * 1000)
    monkeypatch.setattr(os, "writev", real_writev)
    _, path = await _keep(store, b"third")
    store.close()
    assert archive.read_body(tmp_path, path) == b"third"
    [found] = archive.warc_files(tmp_path)
    with open(tmp_path / found.name, "rb") as handle:
        ends = [e for _, e, _ in warc.scan(handle, False)]
    assert ends[-1] == found.size and len(ends) == 5  # warcinfo, 2 x (request + response)


async def test_durable_syncs_every_record_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`durable` returns once fdatasync covered every record written: what the recorder waits
    for before a commit, so no committed result points past what is on the disk."""
    store = BodyStore(tmp_path)
    synced: list[int] = []  # the file's size at each fdatasync
    real = os.fdatasync

    def recording(fd: int) -> None:
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fdatasync", recording)
    _, path = await _keep(store, b"payload" * 100)
    assert not synced  # the record's answer does not wait for the disk
    await store.durable()
    name, _, offset = path.partition("#")
    assert synced == [(tmp_path / name).stat().st_size] and synced[0] > int(offset)
    await store.durable()
    assert len(synced) == 1  # nothing new written: no second sync
    store.close()
    await store.durable()  # after close (which synced): nothing to do, no hang


async def test_megabytes_written_are_synced_without_waiting_for_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a few megabytes written since the last sync the writer syncs (and drops those
    pages) on its own; small bodies wait for the commit's `durable`."""
    store = BodyStore(tmp_path)
    synced: list[int] = []
    real = os.fdatasync

    def recording(fd: int) -> None:
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fdatasync", recording)
    for _ in range(20):
        await _keep(store, os.urandom(1_000))
    assert not synced
    for _ in range(6):
        await _keep(store, os.urandom(1_000_000))
    assert len(synced) == 1 and synced[0] > 4 << 20
    store.close()


async def test_a_failed_sync_raises_and_a_new_file_is_begun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fdatasync that fails (EIO) says nothing about what reached the disk: `durable`
    raises, and keeps raising (a later sync of another file must not let the results of the
    first be committed, as a final flush at shutdown would); the next record goes to a new file
    (the old one keeps its marker, for the next start's repair)."""
    store = BodyStore(tmp_path)
    await _keep(store, b"first")

    monkeypatch.setattr(os, "fdatasync", _input_output_error)
    with pytest.raises(OSError, match="Input/output error"):
        await store.durable()
    monkeypatch.undo()
    _, path = await _keep(store, b"third")
    with pytest.raises(OSError, match="Input/output error"):
        await store.durable()
    store.close()
    with pytest.raises(OSError, match="Input/output error"):
        await store.durable()
    assert archive.read_body(tmp_path, path) == b"third"
    files = archive.warc_files(tmp_path)
    assert len(files) == 2 and [f.open for f in files].count(True) == 1


async def test_a_sync_that_hangs_is_given_up_on_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body directory that hangs does not hang the commits: `durable` gives up at its
    deadline with OSError (the recorder then stops the daemon), as a record's write does."""
    store = BodyStore(tmp_path, deadline_s=0.2)
    await _keep(store, b"first")
    monkeypatch.setattr(BodyStore, "_sync", lambda _: time.sleep(1.0))
    loop, errors = asyncio.get_running_loop(), []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    started = time.monotonic()
    with pytest.raises(OSError, match=r"did not answer within 0\.2s"):
        await store.durable()
    assert time.monotonic() - started < 0.9
    await asyncio.sleep(1.0)  # the stalled sync ends: its answer, come too late, is dropped
    assert not errors
    store.close()


async def test_a_close_that_hangs_gives_up_at_the_deadline_and_leaves_the_file_to_repair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At shutdown the last sync and close have the store's deadline too: a body directory
    that hangs ends the daemon with OSError (exit 1) instead of hanging until it is killed,
    and the file keeps its marker for the next start's repair."""
    store = BodyStore(tmp_path, deadline_s=0.2)
    await _keep(store, b"first")
    release = threading.Event()
    monkeypatch.setattr(BodyStore, "_close", lambda _: release.wait(10))
    started = time.monotonic()
    try:
        with pytest.raises(OSError, match=r"did not finish writing within 0\.2s"):
            store.close()
        assert time.monotonic() - started < 0.9
        assert len(list(tmp_path.glob("*" + archive.OPEN))) == 1
    finally:
        release.set()


async def test_a_close_whose_sync_fails_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BodyStore(tmp_path)
    await _keep(store, b"first")

    monkeypatch.setattr(os, "fsync", _input_output_error)
    with pytest.raises(OSError, match="Input/output error"):
        store.close()


async def test_deadlines_fire_each_on_time_with_one_timer() -> None:
    """A shorter deadline set after a longer one still fires on time; what is answered in
    time is answered, and an answer that comes after its deadline changes nothing."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    slow, quick, late = loop.create_future(), loop.create_future(), loop.create_future()
    waiting = [
        asyncio.ensure_future(deadlines.wait(slow, 5.0)),
        asyncio.ensure_future(deadlines.wait(quick, 0.1)),
        asyncio.ensure_future(deadlines.wait(late, 0.15)),
    ]
    started = time.monotonic()
    with pytest.raises(OSError, match=r"within 0\.1s"):
        await waiting[1]
    with pytest.raises(OSError, match=r"within 0\.15s"):
        await waiting[2]
    assert time.monotonic() - started < 1.0 and not waiting[0].done()
    slow.set_result("kept")
    assert await waiting[0] == "kept"


async def test_the_recorder_commits_only_once_the_bodies_are_durable() -> None:
    """The recorder asks for durability before each commit with outcomes; when the sync
    fails, nothing is committed, the batch stays held, and the error goes up (the daemon
    stops: a disk that lost writes is not a store that is away)."""
    steps: list[str] = []
    failing = True
    queue = MemoryQueue()

    async def durable() -> None:
        steps.append("durable")
        if failing:
            raise OSError(5, "Input/output error")

    async def record(batch: Batch) -> None:
        steps.append(f"record {len(batch.outcomes)}")

    queue.record = record  # type: ignore[method-assign]
    guarded = GuardedQueue(queue, StoreHealth(Notifier({})), asyncio.Event())
    recorder = Recorder(guarded, durable=durable)
    recorder.outcome(Outcome(1, JobState.DONE, 1, body_path="f.warc#0"))
    with pytest.raises(OSError, match="Input/output error"):
        await recorder.flush()
    assert steps == ["durable"]
    failing = False
    await recorder.flush()
    assert steps == ["durable", "durable", "record 1"]


def test_repair_cuts_a_dead_daemons_torn_record_and_leaves_a_live_ones(tmp_path: Path) -> None:
    machine = socket.gethostname()
    whole = _response(b"x" * 100)
    dead = archive.file_name("20260101000000000", 1, machine, 2**22 + 12345, False)
    live = archive.file_name("20260101000000000", 1, machine, os.getppid(), False)
    for name in (dead, live):
        (tmp_path / name).write_bytes(whole + whole[:50])
        (tmp_path / (name + archive.OPEN)).touch()
    repair(tmp_path)
    assert (tmp_path / dead).read_bytes() == whole
    assert not (tmp_path / (dead + archive.OPEN)).exists()
    assert (tmp_path / live).stat().st_size == len(whole) + 50  # its daemon is still writing
    assert (tmp_path / (live + archive.OPEN)).exists()


def test_retention_removes_files_past_it_and_open_ones_only_when_nobody_will_close_them(
    tmp_path: Path,
) -> None:
    """Past the retention, a complete file goes; an open one goes with its marker when its
    daemon is gone: of this machine, a dead pid; of another machine, its age alone says so
    (a live daemon closes its file within half the retention). A live daemon's open file, and
    every file written since `before`, stay."""
    here = socket.gethostname()
    names = {
        "closed": archive.file_name("20260101000000000", 1, here, 2**22 + 1, False),
        "dead here": archive.file_name("20260101000000000", 2, here, 2**22 + 12345, False),
        "live here": archive.file_name("20260101000000000", 3, here, os.getppid(), False),
        "elsewhere": archive.file_name("20260101000000000", 4, "gone-machine", 7, False),
        "recent": archive.file_name("20260101000000000", 5, "gone-machine", 8, False),
        "recent closed": archive.file_name("20260101000000000", 6, here, 2**22 + 2, False),
    }
    now = time.time()
    for kind, name in names.items():
        (tmp_path / name).write_bytes(_response(b"x"))
        if kind not in ("closed", "recent closed"):
            (tmp_path / (name + archive.OPEN)).touch()
        age = 10 if kind.startswith("recent") else 40 * 86_400
        os.utime(tmp_path / name, (now - age, now - age))
    gone = archive.remove_expired(tmp_path, now - 30 * 86_400)
    assert sorted(gone) == sorted(names[k] for k in ("closed", "dead here", "elsewhere"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        names["live here"], names["live here"] + archive.OPEN,
        names["recent"], names["recent"] + archive.OPEN, names["recent closed"],
    ])  # fmt: skip


def test_a_file_stays_open_at_most_half_the_retention() -> None:
    """So that retention can tell a file nobody will close from a live daemon's."""
    assert Settings(retention_days=30).warc_age_limit == 86_400  # FETCHER_WARC_MAX_AGE
    assert Settings(retention_days=1).warc_age_limit == 43_200
    assert Settings(retention_days=0, warc_max_age=10 * 86_400).warc_age_limit == 10 * 86_400


def test_read_body_says_gone_for_what_is_not_there(tmp_path: Path) -> None:
    name = archive.file_name("20260101000000000", 1, "m", 1, False)
    (tmp_path / name).write_bytes(_response(b"body"))
    assert archive.read_body(tmp_path, f"{name}#0") == b"body"
    assert archive.read_body(tmp_path, f"{name}#5") is None  # not a record's start
    assert archive.read_body(tmp_path, "fetcher-x.warc#0") is None
    assert archive.read_body(tmp_path, "../../etc/passwd") is None
    assert archive.read_body(tmp_path, "ab/" + "ab" * 32) is None


def _input_output_error(fd: int) -> None:
    """A sync of a disk that failed (EIO)."""
    raise OSError(5, "Input/output error")
