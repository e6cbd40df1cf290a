"""WARC 1.1 records (ISO 28500:2017) as fetcher writes and reads them: bytes in, bytes out.

Records are built by hand: warcio builds the same record at 3x the cost (bench/warc_writer.py,
BENCHMARKS.md), and the tests read every file fetcher writes with warcio. Where a record goes
on disk, and when, is `bodies.py`'s.

A response record's block is the status line and headers as received, then the payload as
fetcher keeps it: transfer- and content-decoded. Where a response came encoded, its
`Content-Encoding`, `Transfer-Encoding` and `Content-Length` are kept as `X-Crawler-…` and a
`Content-Length` of the stored payload is added, as Common Crawl does, so that no reader decodes
a payload twice. `.warc.gz` files hold one gzip member a record: each record readable from its
offset alone.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from fetcher.secrets import is_secret

__all__ = [
    "END", "IDENTICAL_PAYLOAD", "Capture", "Original", "Record", "gzip_member", "gzip_packer",
    "http_payload", "read_fields", "read_record", "record_id", "request_record", "response_head",
    "revisit_record", "scan", "warc_date", "warcinfo_record",
]  # fmt: skip

END = b"\r\n\r\n"  # after every record's block
IDENTICAL_PAYLOAD = "http://netpreserve.org/warc/1.1/revisit/identical-payload-digest"
_RENAMED = frozenset((b"content-encoding", b"transfer-encoding", b"content-length"))
_ENCODED = frozenset((b"content-encoding", b"transfer-encoding"))
_CHUNK = 1 << 20
_MAX_HEAD = 1 << 16  # a WARC header block longer than this is no record of ours


@dataclass(frozen=True, slots=True)
class Capture:
    """One request and the head of its response: what a record says besides the payload."""

    url: str
    started: float  # unix time the request went out
    peer: str | None  # the address connected to, as the guard checked it
    status: int
    reason: str
    version: str  # "HTTP/1.1"
    headers: Sequence[tuple[bytes, bytes]]  # as received
    method: str = "GET"
    request_headers: Sequence[tuple[str, str]] = ()
    request_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Original:
    """A response record already written, which a revisit record refers to."""

    location: str  # FILE#OFFSET
    record_id: str
    url: str
    date: str


@dataclass(frozen=True, slots=True)
class Record:
    type: str
    fields: dict[str, str]  # the WARC header fields (names as written)
    block: bytes


def record_id() -> str:
    """A random (version 4) UUID as a URN, built without uuid.UUID (a third of the cost)."""
    raw = bytearray(os.urandom(16))
    raw[6], raw[8] = (raw[6] & 0x0F) | 0x40, (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"<urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}>"


def warc_date(unix: float) -> str:
    """WARC 1.1's date: UTC, with microseconds."""
    seconds = int(unix)
    if seconds != _last_second[0]:  # a second's prefix is formatted once
        _last_second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_last_second[1]}.{int((unix - seconds) * 1e6):06d}Z"


_last_second: list[Any] = [None, ""]


def _head(fields: Sequence[tuple[str, str]], length: int) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return f"WARC/1.1\r\n{lines}Content-Length: {length}\r\n\r\n".encode()


def warcinfo_record(filename: str, rid: str, info: Sequence[tuple[str, str]], unix: float) -> bytes:
    """The first record of every file (`rid` its id): who wrote it, and how."""
    block = "".join(f"{name}: {value}\r\n" for name, value in info).encode()
    fields = [
        ("WARC-Type", "warcinfo"), ("WARC-Record-ID", rid),
        ("WARC-Date", warc_date(unix)), ("WARC-Filename", filename),
        ("Content-Type", "application/warc-fields"),
    ]  # fmt: skip
    return _head(fields, len(block)) + block + END


def _http_head(capture: Capture, payload_length: int | None) -> bytes:
    """The status line and headers as received; renamed where the payload is stored decoded
    (`payload_length` None: a revisit, whose payload is elsewhere)."""
    lines = [f"{capture.version} {capture.status} {capture.reason}".encode("latin-1", "replace")]
    decoded = any(name.lower() in _ENCODED for name, _ in capture.headers)
    for name, value in capture.headers:
        if decoded and name.lower() in _RENAMED:
            name = b"X-Crawler-" + name
        lines.append(name + b": " + value)
    if decoded and payload_length is not None:
        lines.append(b"Content-Length: %d" % payload_length)
    return b"\r\n".join(lines) + END


def response_head(
    capture: Capture, rid: str, digest: str, payload_length: int, warcinfo: str
) -> bytes:
    """A response record up to its payload: the payload and `END` follow."""
    http = _http_head(capture, payload_length)
    fields = [
        ("WARC-Type", "response"), ("WARC-Record-ID", rid),
        ("WARC-Date", warc_date(capture.started)), ("WARC-Target-URI", capture.url),
        ("WARC-Warcinfo-ID", warcinfo),
    ]  # fmt: skip
    if capture.peer:
        fields.append(("WARC-IP-Address", capture.peer))
    fields += [
        ("WARC-Payload-Digest", f"sha256:{digest}"),
        ("Content-Type", "application/http;msgtype=response"),
    ]
    return _head(fields, len(http) + payload_length) + http


def revisit_record(
    capture: Capture, rid: str, digest: str, original: Original | None, warcinfo: str
) -> bytes:
    """A response whose payload is kept already (`original`'s; unknown when the original is a
    body in the old layout): the headers only."""
    http = _http_head(capture, None)
    fields = [
        ("WARC-Type", "revisit"), ("WARC-Record-ID", rid),
        ("WARC-Date", warc_date(capture.started)), ("WARC-Target-URI", capture.url),
        ("WARC-Warcinfo-ID", warcinfo), ("WARC-Profile", IDENTICAL_PAYLOAD),
    ]  # fmt: skip
    if capture.peer:
        fields.append(("WARC-IP-Address", capture.peer))
    fields.append(("WARC-Payload-Digest", f"sha256:{digest}"))
    if original is not None:
        fields += [
            ("WARC-Refers-To", original.record_id),
            ("WARC-Refers-To-Target-URI", original.url),
            ("WARC-Refers-To-Date", original.date),
        ]
    fields.append(("Content-Type", "application/http;msgtype=response"))
    return _head(fields, len(http)) + http + END


def request_record(capture: Capture, concurrent_to: str, warcinfo: str) -> bytes:
    """The request as sent, for one with a body; secret header values are not kept."""
    parts = urlsplit(capture.url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{capture.method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    for name, value in capture.request_headers:
        lines.append(f"{name}: {'***' if is_secret(name) else value}")
    block = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    block += capture.request_body or b""
    fields = [
        ("WARC-Type", "request"), ("WARC-Record-ID", record_id()),
        ("WARC-Date", warc_date(capture.started)), ("WARC-Target-URI", capture.url),
        ("WARC-Warcinfo-ID", warcinfo), ("WARC-Concurrent-To", concurrent_to),
        ("Content-Type", "application/http;msgtype=request"),
    ]  # fmt: skip
    return _head(fields, len(block)) + block + END


def gzip_packer() -> Any:
    """A compressor of one gzip member (level 6, as warcio writes)."""
    return zlib.compressobj(6, zlib.DEFLATED, 31)


def gzip_member(data: bytes) -> bytes:
    """One record as one gzip member."""
    packer = gzip_packer()
    return bytes(packer.compress(data) + packer.flush())


# -- reading ---------------------------------------------------------------------------------


def _parse(data: bytes) -> tuple[dict[str, str], int, int] | None:
    """A record's header fields, where its block starts and how long it is; None if `data`
    does not hold the whole header."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].decode("utf-8", "replace").split("\r\n")
    if not lines[0].startswith("WARC/"):
        raise ValueError(f"not a WARC record: {lines[0][:40]!r}")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields, end + 4, int(fields["Content-Length"])


def _field(fields: dict[str, str], name: str) -> str:
    return next((v for k, v in fields.items() if k.lower() == name.lower()), "")


def _plain_head(file: IO[bytes], offset: int) -> tuple[dict[str, str], int, int, bytes] | None:
    """The header of the uncompressed record at `offset`: its fields, where its block starts
    and how long it is (both from `offset`), and the bytes read; None if no whole header is
    there."""
    file.seek(offset)
    head = b""
    while len(head) < _MAX_HEAD:
        more = file.read(4096)
        if not more:
            return None
        head += more
        parsed = _parse(head)
        if parsed is not None:
            return (*parsed, head)
    return None


def read_fields(file: IO[bytes], offset: int, gzipped: bool) -> dict[str, str]:
    """The header fields of the record at `offset`, its block left unread (a gzip member is
    inflated only as far as its header)."""
    if not gzipped:
        parsed = _plain_head(file, offset)
        if parsed is None:
            raise ValueError(f"no record at {offset}")
        return parsed[0]
    file.seek(offset)
    unpacker, head = zlib.decompressobj(31), bytearray()
    while len(head) < _MAX_HEAD and not unpacker.eof:
        chunk = file.read(4096)
        if not chunk:
            break
        head += unpacker.decompress(chunk)
        found = _parse(bytes(head[:_MAX_HEAD]))  # as scan and read_record look
        if found is not None:
            return found[0]
    raise ValueError(f"no record at {offset}")


def read_record(file: IO[bytes], offset: int, gzipped: bool) -> Record:
    """The record at `offset`; ValueError if there is none, or only part of one."""
    if gzipped:
        file.seek(offset)
        unpacker = zlib.decompressobj(31)
        data = bytearray()
        while not unpacker.eof:
            chunk = file.read(_CHUNK)
            if not chunk:
                raise ValueError(f"a torn record at {offset}")
            data += unpacker.decompress(chunk)
        parsed = _parse(bytes(data[:_MAX_HEAD]))
        if parsed is None:
            raise ValueError(f"no record at {offset}")
        fields, start, length = parsed
        block = bytes(data[start : start + length])
    else:
        found = _plain_head(file, offset)
        if found is None:
            raise ValueError(f"no record at {offset}")
        fields, start, length, head = found
        block = head[start : start + length]
        if len(block) < length:
            block += file.read(length - len(block))
    if len(block) < length:
        raise ValueError(f"a torn record at {offset}")
    return Record(_field(fields, "WARC-Type"), fields, block)


def http_payload(block: bytes) -> bytes:
    """A response record's payload: its block past the HTTP head."""
    end = block.find(b"\r\n\r\n")
    return block[end + 4 :] if end >= 0 else b""


def scan(file: IO[bytes], gzipped: bool) -> Iterator[tuple[int, int, str]]:
    """(offset, end, type) of each whole record from the start, in order; stops before the
    first record that is not whole (a torn end: where a file is cut on repair)."""
    yield from (_scan_members(file) if gzipped else _scan_plain(file))


def _scan_plain(file: IO[bytes]) -> Iterator[tuple[int, int, str]]:
    offset = 0
    while True:
        try:
            found = _plain_head(file, offset)
        except (ValueError, KeyError):
            return
        if found is None:
            return
        fields, start, length, _ = found
        file.seek(offset + start + length)
        if file.read(4) != END:
            return
        end = offset + start + length + 4
        yield offset, end, _field(fields, "WARC-Type")
        offset = end


def _scan_members(file: IO[bytes]) -> Iterator[tuple[int, int, str]]:
    offset, pending = 0, b""
    file.seek(0)
    while True:
        data = pending or file.read(_CHUNK)
        if not data:
            return
        unpacker, head, used = zlib.decompressobj(31), bytearray(), 0
        try:
            while True:
                head += unpacker.decompress(data)[: _MAX_HEAD - len(head)]
                if unpacker.eof:
                    used += len(data) - len(unpacker.unused_data)
                    pending = unpacker.unused_data
                    break
                used += len(data)
                data = file.read(_CHUNK)
                if not data:
                    return
            parsed = _parse(bytes(head))
        except (zlib.error, ValueError, KeyError):
            return
        if parsed is None:
            return
        yield offset, offset + used, _field(parsed[0], "WARC-Type")
        offset += used
