"""Response bodies on disk, content-addressed: `<dir>/ab/abcdef…` named by their sha256.

A body is held in memory up to `_SPILL_BYTES` and streamed to a temporary file past that, so
memory per request in flight stays bounded whatever the size cap. Identical bodies share a file.
A write that fails (disk full, directory gone) raises `BodyNotKept`, never a bare OSError that
could pass for a network error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO

from fetcher.errors import BodyNotKept

__all__ = ["BodySink", "BodyStore"]

_SPILL_BYTES = 256 * 1024
_KNOWN_MAX = 100_000


class BodyStore:
    """The body directory, created owner-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "tmp").mkdir(mode=0o700, exist_ok=True)
        self._tmp = str(root / "tmp")
        self._known: set[str] = set()  # digests filed by this process: no stat() for repeats

    def sink(self) -> BodySink:
        return BodySink(self)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def file(self, digest: str, data: bytes | None, spilled: str | None) -> None:
        """Put a body under its digest, from memory or from its spill file; once per digest."""
        if digest in self._known:
            if spilled is not None:
                os.unlink(spilled)
            return
        final = os.path.join(self.root, digest[:2], digest)
        if os.path.exists(final):
            if spilled is not None:
                os.unlink(spilled)
        else:
            os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
            if spilled is None:
                fd, spilled = tempfile.mkstemp(dir=self._tmp)
                with os.fdopen(fd, "wb") as out:
                    out.write(data or b"")
            os.replace(spilled, final)
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known.add(digest)

    def relative(self, sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}"


class BodySink:
    """Collects one body's decoded bytes; `commit` files it under its hash."""

    def __init__(self, store: BodyStore) -> None:
        self._store = store
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        try:
            if self._file is not None:
                self._file.write(data)
                return
            self._buffer += data
            if len(self._buffer) > _SPILL_BYTES:
                self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in commit/discard
                    dir=self._store.root / "tmp", delete=False
                )
                self._file.write(self._buffer)
                self._buffer = bytearray()
        except OSError as exc:
            raise BodyNotKept(exc) from exc

    def commit(self) -> tuple[str, str]:
        """File the body; (sha256, path relative to the body directory)."""
        digest = self._hash.hexdigest()
        try:
            if self._file is not None:
                self._file.close()
                self._store.file(digest, None, self._file.name)
                self._file = None
            else:
                self._store.file(digest, bytes(self._buffer), None)
        except OSError as exc:
            raise BodyNotKept(exc) from exc
        return digest, self._store.relative(digest)

    def discard(self) -> None:
        """Drop what was collected; a spill file that cannot even be closed is still removed."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._file.name)
            self._file = None
        self._buffer = bytearray()
