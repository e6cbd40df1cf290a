"""Kept bodies written as WARC records, one file per daemon at a time (`archive.py` names them).

A body is collected by a `BodySink`: in memory while the bodies held by every request in flight
stay within `_MEMORY_BYTES`; a body that would go past it is handed piece by piece to the
writer thread, which spills it to a temporary file, so memory stays bounded whatever the size
cap and the concurrency, and a body is written once when they allow. When the response is
whole, `BodyStore.keep` hands it to the store's one writer thread (`diskthread.Writer`), which
hashes it, appends its record (and a request record for a request with a body) and answers
`FILE#OFFSET`: the event loop never waits on the disk, and records never interleave. Before
each commit of results the recorder asks `BodyStore.durable` (one fdatasync), so a result can
only point at a record already on the disk. A payload the current file holds already, and a
304, get a `revisit` record; the result then points at the original.

A write that fails (disk full, directory gone) is cut off the file again and raises
`BodyNotKept`, never a bare OSError that could pass for a network error. A sync that fails
abandons the file (the next record begins another) and stops the commit. A daemon killed
while writing leaves a `.open` marker beside its file; the next daemon started on the machine
cuts that file's torn last record off and removes the marker. Files are closed (fsynced,
marker removed) past FETCHER_WARC_MAX_BYTES, past FETCHER_WARC_MAX_AGE (housekeeping asks, so
an idle daemon's file is closed too: retention removes only complete files) and at shutdown.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fetcher import __version__, archive, warc
from fetcher.config import DEFAULT_TIMEOUT_S
from fetcher.daemons import this_machine
from fetcher.diskthread import Deadlines, Writer
from fetcher.errors import BodyNotKept
from fetcher.log import get_logger
from fetcher.model import Validators

__all__ = ["BodySink", "BodyStore"]

_log = get_logger("fetcher.bodies")

_MEMORY_BYTES = 64 << 20  # bodies held in memory at once, all requests together
_UNSYNCED_BYTES = 4 << 20  # written since the last sync: synced (and dropped) at once
_STEP_BYTES = 256 * 1024  # a large body is hashed, or spilled, this much at a time
_CHUNK = 1 << 20
_MAX_PIECES = 64  # a record's pieces go to one writev (IOV_MAX is 1024)
_ORIGINALS_MAX = 100_000


class _Budget:
    """The bytes bodies may still hold in memory (the event loop's: sinks take and give back)."""

    __slots__ = ("free",)

    def __init__(self, total: int) -> None:
        self.free = total


class BodySink:
    """Collects one body's decoded bytes, for `BodyStore.keep`: the pieces as they came (no
    copy; written with one writev). A body up to `_STEP_BYTES` is hashed by the writer thread;
    a larger one is hashed here `_STEP_BYTES` at a time, while its bytes are still in the
    processor's cache (hashed at its end, from memory, a 1 MB body costs half as much again:
    BENCHMARKS.md, "hashing"). When the memory budget is spent, the pieces go to a temporary
    file, written by the writer thread: the event loop never writes to the disk."""

    def __init__(self, tmp: str, writer: Writer, budget: _Budget) -> None:
        self._tmp = tmp
        self._writer = writer
        self._budget = budget
        self._held = 0  # of the budget
        self._spilling = False
        self._pieces: list[bytes] = []  # not spilled
        self._pending = 0  # bytes in _pieces
        self._unhashed: list[bytes] = []
        self._fresh = 0  # bytes in _unhashed
        self._file: IO[bytes] | None = None  # the spill file: the writer thread's
        self._hash = hashlib.sha256()  # the writer thread's once handed
        self._failure: OSError | None = None
        self.length = 0
        self.handed = False  # to the writer thread: the event loop no longer touches it

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise BodyNotKept(self._failure)
        piece, size = bytes(data), len(data)
        self.length += size
        self._pending += size
        self._fresh += size
        self._pieces.append(piece)
        self._unhashed.append(piece)
        if len(self._pieces) > _MAX_PIECES:  # many small pieces: one, so writev takes them
            self._pieces = [b"".join(self._pieces)]
        if len(self._unhashed) > _MAX_PIECES:
            self._unhashed = [b"".join(self._unhashed)]
        if self._fresh > _STEP_BYTES:  # a large body: hashed here, while still in the cache
            self._hash_pieces(self._unhashed)
            self._unhashed, self._fresh = [], 0
        if not self._spilling:
            if size <= self._budget.free:
                self._budget.free -= size
                self._held += size
                return
            self._spilling = True  # the budget is spent: this body goes by the disk
            self.release()
        if self._pending > _STEP_BYTES:
            self._writer.post(self._spill, self._pieces)
            self._pieces, self._pending = [], 0

    def release(self) -> None:
        """Give the memory this body held back to the budget (the event loop's, once the
        record is written or the body dropped)."""
        self._budget.free += self._held
        self._held = 0

    def _hash_pieces(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._hash.update(piece)

    def _spill(self, pieces: list[bytes]) -> None:  # the writer thread
        if self._failure is not None:
            return
        try:
            if self._file is None:
                self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in discard
                    dir=self._tmp, delete=False
                )
            self._file.writelines(pieces)
        except OSError as exc:
            self._failure = exc

    def digest(self) -> str:
        """The body's sha256 (the writer thread's: hashlib lets the event loop run)."""
        if self._failure is not None:
            raise self._failure
        self._hash_pieces(self._unhashed)
        return self._hash.hexdigest()

    def chunks(self) -> Iterator[bytes]:
        if self._file is not None:
            self._file.flush()
            with open(self._file.name, "rb") as spilled:
                while chunk := spilled.read(_CHUNK):
                    yield chunk
        yield from self._pieces

    def discard(self) -> None:
        """Drop what was collected; a spill file that cannot even be closed is still removed.
        A sink that spilled is discarded by the writer thread, after its last spill."""
        in_writer = threading.current_thread() is self._writer.thread
        if not in_writer:
            self.release()
        if self._pending == self.length or in_writer:
            self._drop()
        else:
            self._writer.post(self._drop)

    def _drop(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._file.name)
            self._file = None
        self._pieces = []


@dataclass(slots=True)
class _Current:
    """The file being appended to."""

    name: str
    fd: int
    size: int
    warcinfo: str
    opened: float  # time.monotonic()
    synced: int = 0  # bytes known to be on the disk


class BodyStore:
    """The body directory (owner-only) and this daemon's WARC writer."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = 1 << 30,
        max_age_s: float = 86_400.0,
        gzip: bool = False,
        memory_bytes: int = _MEMORY_BYTES,
        deadline_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "tmp").mkdir(mode=0o700, exist_ok=True)
        self._tmp = str(root / "tmp")
        archive.repair(root)
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._gzip = gzip
        self._writer = Writer()
        self._deadlines = Deadlines()
        self._deadline_s = deadline_s  # how long the directory may take (FETCHER_TIMEOUT)
        self._budget = _Budget(memory_bytes)
        self._sync_failure: OSError | None = None
        self._current: _Current | None = None
        self._serial = 0
        self._originals: dict[str, warc.Original] = {}  # payloads in the current file

    def sink(self) -> BodySink:
        return BodySink(self._tmp, self._writer, self._budget)

    def holds(self, body_path: str | None) -> bool:
        """Whether the file a body_path names is still there (no body_path: nothing to hold)."""
        return body_path is None or os.path.exists(self.root / body_path.partition("#")[0])

    async def keep(
        self, sink: BodySink, capture: warc.Capture, deadline_s: float | None = None
    ) -> tuple[str, str]:
        """Write the body's record; (sha256, FILE#OFFSET of the record holding the payload).
        Past `deadline_s` (the store's by default; a body directory that hangs) it gives up:
        BodyNotKept."""
        sink.handed = True
        try:
            written = self._writer.submit(self._keep, sink, capture)
            return await self._deadlines.wait(  # type: ignore[no-any-return]
                written, deadline_s or self._deadline_s
            )
        except OSError as exc:
            raise BodyNotKept(exc) from exc
        finally:
            sink.release()

    async def durable(self) -> None:
        """Every record written so far is on the disk (fdatasync), within the store's deadline
        (a body directory that hangs: OSError). The recorder waits for this before each
        commit, so no committed result points at a record a power loss could take; it costs
        one fdatasync a commit, not a record (and no job's slot waits for it). Once a sync
        failed, this raises that OSError for good: what the file held is unknown, so no commit
        may claim it (the daemon stops; the jobs not committed are fetched again)."""
        if not self._writer.stopped:  # stopped: close() synced the file
            await self._deadlines.wait(self._writer.submit(self._sync), self._deadline_s)
        if self._sync_failure is not None:  # not known to be kept, then or ever after
            raise self._sync_failure

    async def revisit(
        self, capture: warc.Capture, validators: Validators, deadline_s: float | None = None
    ) -> None:
        """A 304's revisit record, referring to the response the validators came with."""
        try:
            written = self._writer.submit(self._revisit, capture, validators)
            await self._deadlines.wait(written, deadline_s or self._deadline_s)
        except OSError as exc:
            raise BodyNotKept(exc) from exc

    @property
    def age_check_s(self) -> float:
        """How often housekeeping should call `close_if_old`."""
        return min(60.0, self._max_age_s / 4)

    def close_if_old(self) -> None:
        """Close the file past FETCHER_WARC_MAX_AGE, whether or not a record comes (the writer
        thread does it in turn): an idle daemon's file becomes complete, for its readers and
        for retention, which removes only complete files; without this, a daemon writing
        little would keep one file open, and its bodies, far past FETCHER_RETENTION_DAYS."""
        if not self._writer.stopped:
            self._writer.post(self._close_if_old)

    def close(self) -> None:
        """At shutdown: every record handed over written, the file synced and closed, by the
        writer thread, within the store's deadline. A body directory that hangs past it:
        OSError (the daemon exits 1 instead of hanging until it is killed); the file keeps
        its marker, and the next start cuts off what it cannot trust."""
        failed: list[BaseException] = []
        self._writer.post(_closing, self._close, failed)
        self._writer.stop(self._deadline_s)
        if failed:
            raise failed[0]

    # -- the writer thread ---------------------------------------------------------------------

    def _keep(self, sink: BodySink, capture: warc.Capture) -> tuple[str, str]:
        try:
            digest = sink.digest()
            current = self._file()
            rid = warc.record_id()
            before = b""
            if capture.request_body is not None:
                before = self._pack(warc.request_record(capture, rid, current.warcinfo))
            original = self._originals.get(digest)
            if original is not None:
                revisit = warc.revisit_record(capture, rid, digest, original, current.warcinfo)
                self._append([before, self._pack(revisit)])
                self._rotate_if_full()
                return digest, original.location
            head = warc.response_head(capture, rid, digest, sink.length, current.warcinfo)
            start = self._append(self._response(before, head, sink))
            location = f"{current.name}#{start + len(before)}"
            if len(self._originals) >= _ORIGINALS_MAX:
                self._originals.clear()
            self._originals[digest] = warc.Original(
                location, rid, capture.url, warc.warc_date(capture.started)
            )
            self._rotate_if_full()
            return digest, location
        finally:
            sink.discard()

    def _revisit(self, capture: warc.Capture, validators: Validators) -> None:
        if validators.body_sha256 is None:
            return
        current = self._file()
        original = self._original(validators.body_path)
        record = warc.revisit_record(
            capture, warc.record_id(), validators.body_sha256, original, current.warcinfo
        )
        self._append([self._pack(record)])
        self._rotate_if_full()

    def _original(self, body_path: str | None) -> warc.Original | None:
        """What a revisit says of the record at `body_path` (read back from its header)."""
        name, _, offset = (body_path or "").partition("#")
        if not offset.isdigit():
            return None
        try:
            with open(self.root / name, "rb") as file:
                fields = warc.read_fields(file, int(offset), archive.is_gzipped(name))
        except (OSError, ValueError):
            return None
        return warc.Original(
            body_path or "", fields.get("WARC-Record-ID", ""),
            fields.get("WARC-Target-URI", ""), fields.get("WARC-Date", ""),
        )  # fmt: skip

    def _response(self, before: bytes, head: bytes, sink: BodySink) -> Iterator[bytes]:
        if not self._gzip:
            yield before
            yield head
            yield from sink.chunks()
            yield warc.END
            return
        packer = warc.gzip_packer()
        yield before + packer.compress(head)
        for chunk in sink.chunks():
            yield packer.compress(chunk)
        yield packer.compress(warc.END) + packer.flush()

    def _pack(self, record: bytes) -> bytes:
        return warc.gzip_member(record) if self._gzip else record

    def _file(self) -> _Current:
        if self._current is None:
            now = time.time()
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1000):03d}"
            self._serial += 1
            name = archive.file_name(stamp, self._serial, this_machine(), os.getpid(), self._gzip)
            (self.root / (name + archive.OPEN)).touch(mode=0o600)
            fd = os.open(self.root / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            rid = warc.record_id()
            self._current = _Current(name, fd, 0, rid, time.monotonic())
            info = warc.warcinfo_record(name, rid, _info(), now)
            try:
                self._append([self._pack(info)])
            except OSError:
                self._close(None)
                (self.root / name).unlink(missing_ok=True)
                raise
        return self._current

    def _append(self, parts: Iterable[bytes]) -> int:
        """Write one record's bytes at the end of the file, `_MAX_PIECES` a system call; its
        offset. A failed write is cut off again (a file that cannot be cut is left to the next
        start's repair)."""
        current = self._current
        assert current is not None
        start, written = current.size, 0
        try:
            batch: list[bytes] = []
            for part in parts:
                batch.append(part)
                if len(batch) == _MAX_PIECES:
                    written += _write_all(current.fd, batch)
                    batch = []
            written += _write_all(current.fd, batch)
        except OSError:
            try:
                os.ftruncate(current.fd, start)
            except OSError:
                self._abandon()
            raise
        current.size = start + written
        return start

    def _sync(self) -> None:
        """The records written are on the disk; their pages are then dropped from the page
        cache: an archive is not read back soon, the database's pages stay cached, and the next
        records reuse the pages just freed instead of touching new memory (BENCHMARKS.md,
        "dropped pages"). A sync that fails abandons the file."""
        current = self._current
        if current is None or current.synced == current.size:
            return
        try:
            os.fdatasync(current.fd)
        except OSError as exc:
            self._sync_failure = exc
            self._abandon()
            raise
        with contextlib.suppress(OSError):
            os.posix_fadvise(
                current.fd, current.synced, current.size - current.synced,
                os.POSIX_FADV_DONTNEED,
            )  # fmt: skip
        current.synced = current.size

    def _rotate_if_full(self) -> None:
        """Past FETCHER_WARC_MAX_BYTES or FETCHER_WARC_MAX_AGE the file is closed; past
        `_UNSYNCED_BYTES` written since the last sync, it is synced (and its pages dropped) now
        rather than at the next commit: large bodies then reuse a few megabytes of page cache
        instead of touching new memory all along (BENCHMARKS.md, "dropped pages")."""
        current = self._current
        if current is None:
            return
        if current.size >= self._max_bytes:
            self._close("size")
        elif self._aged(current):
            self._close("age")
        elif current.size - current.synced >= _UNSYNCED_BYTES:
            self._sync()

    def _aged(self, current: _Current) -> bool:
        return time.monotonic() - current.opened >= self._max_age_s

    def _close_if_old(self) -> None:
        current = self._current
        if current is not None and self._aged(current):
            self._close("age")

    def _abandon(self) -> None:
        """Stop appending to a file in a state not known (its marker stays: the next start
        repairs it); the next record starts a new file."""
        current, self._current = self._current, None
        self._originals.clear()
        if current is not None:
            with contextlib.suppress(OSError):
                os.close(current.fd)

    def _close(self, why: str | None = "shutdown") -> None:
        """Close the file (fsynced, marker removed); logged `warc.closed` with `why` if any."""
        current, self._current = self._current, None
        self._originals.clear()
        if current is None:
            return
        try:
            os.fsync(current.fd)
        except OSError as exc:  # as a failed fdatasync: no commit may claim its records
            self._sync_failure = exc
            raise
        finally:
            os.close(current.fd)
        (self.root / (current.name + archive.OPEN)).unlink(missing_ok=True)
        if why is not None:
            _log.info("warc.closed", file=current.name, bytes=current.size, why=why)


def _closing(close: Callable[[], None], failed: list[BaseException]) -> None:
    try:
        close()
    except BaseException as exc:  # the caller's to raise: nobody waits on a posted call
        failed.append(exc)


def _write_all(fd: int, parts: list[bytes]) -> int:
    """Write `parts` in order: one writev, then what a short write left."""
    total = sum(len(part) for part in parts)
    if not total:
        return 0
    done = os.writev(fd, parts)
    if done < total:
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]
    return total


def _info() -> list[tuple[str, str]]:
    return [
        ("software", f"fetcher/{__version__}"), ("format", "WARC File Format 1.1"),
        ("conformsTo", "http://iipc.github.io/warc-specifications/"),
        ("hostname", this_machine()),
    ]  # fmt: skip
