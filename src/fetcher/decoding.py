"""Content decoding with a cap on the decoded size, enforced while decoding.

httpx decodes a whole chunk at once, so 590 bytes of `gzip, gzip` become 256 MiB before any
caller can count them. Here every decoder is asked for at most `_STEP` bytes at a time (brotli
may give up to half as much again) and the running total is checked after each step: a bomb
stops one step past the cap.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Protocol

import brotli

from fetcher.errors import BodyTooLarge

__all__ = ["ACCEPT_ENCODING", "CappedDecoder"]

ACCEPT_ENCODING = "gzip, deflate, br"
_STEP = 64 * 1024


class _Stage(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._d = zlib.decompressobj(wbits)
        self._first = True

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._first and data and self._wbits == zlib.MAX_WBITS and data[0] & 0x0F != 8:
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)  # "deflate" sent raw, as some servers do
        self._first = self._first and not data
        while data:
            out = self._d.decompress(data, _STEP)
            data = self._d.unconsumed_tail
            if out:
                yield out
            if self._d.eof:
                return


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        # Output past the limit stays inside the decoder, and `can_accept_more_data()` may
        # say True while it does (brotli 1.2): drain until a call gives nothing, or the last
        # piece of a body would be lost.
        out = self._d.process(data, output_buffer_limit=_STEP)
        while out:
            yield out
            if self._d.is_finished():
                return
            out = self._d.process(b"", output_buffer_limit=_STEP)


def _stage(coding: str) -> _Stage | None:
    if coding in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    if coding == "br":
        return _Brotli()
    return None


class CappedDecoder:
    """Decodes a body coded as `content_encoding` says, at most `max_bytes` of output.

    Unknown codings are passed through as they are (we only ask for the ones above)."""

    def __init__(self, content_encoding: str, max_bytes: int) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
        stages = [_stage(c) for c in reversed(codings) if c != "identity"]
        self._stages: list[_Stage] = [] if None in stages else [s for s in stages if s]
        self._max_bytes = max_bytes
        self.decoded = 0

    def feed(self, raw: bytes) -> Iterator[bytes]:
        """The decoded pieces of `raw`; `BodyTooLarge` once the total passes the cap, after
        the bytes up to the cap (a caller that keeps a prefix, robots.txt, gets all of it)."""
        for piece in self._run(raw, 0):
            self.decoded += len(piece)
            if self.decoded > self._max_bytes:
                room = len(piece) - (self.decoded - self._max_bytes)
                if room > 0:
                    yield piece[:room]
                raise BodyTooLarge(f"body exceeds {self._max_bytes} bytes")
            yield piece

    def _run(self, data: bytes, index: int) -> Iterator[bytes]:
        if index == len(self._stages):
            if data:
                yield data
            return
        try:
            for out in self._stages[index].feed(data):
                yield from self._run(out, index + 1)
        except (zlib.error, brotli.error) as exc:
            raise ValueError(f"undecodable body: {exc}") from None
