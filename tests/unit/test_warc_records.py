"""The WARC records fetcher writes, byte for byte, and its readers at their edges.

test_warc.py reads records back with warcio, which is lenient (field names in any case, a
field missing); here each record is compared with the bytes WARC 1.1 asks for, so a field
renamed, dropped or reordered, or a length off by one, fails (mutation testing of warc.py
found those surviving the reading tests)."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re
import uuid

import pytest
from warcio.archiveiterator import ArchiveIterator

from fetcher import warc

NOON = 1_733_400_000  # 2024-12-05T12:00:00Z
PAGE = warc.Capture(
    "http://example.test/a?b=1", NOON + 0.25, "192.0.2.7", 200, "OK", "HTTP/1.1",
    [(b"Content-Type", b"text/html"), (b"Content-Length", b"5")],
)  # fmt: skip
HTTP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n"


def test_a_response_record_byte_for_byte() -> None:
    head = warc.response_head(PAGE, "<urn:uuid:r>", "ab12", 5, "<urn:uuid:i>")
    assert head == (
        b"WARC/1.1\r\n"
        b"WARC-Type: response\r\n"
        b"WARC-Record-ID: <urn:uuid:r>\r\n"
        b"WARC-Date: 2024-12-05T12:00:00.250000Z\r\n"
        b"WARC-Target-URI: http://example.test/a?b=1\r\n"
        b"WARC-Warcinfo-ID: <urn:uuid:i>\r\n"
        b"WARC-IP-Address: 192.0.2.7\r\n"
        b"WARC-Payload-Digest: sha256:ab12\r\n"
        b"Content-Type: application/http;msgtype=response\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(HTTP_HEAD) + 5) + HTTP_HEAD
    )  # fmt: skip


def test_a_decoded_payloads_transfer_headers_are_renamed_whatever_their_case() -> None:
    """Content-Encoding, Transfer-Encoding and Content-Length kept under X-Crawler- (the
    name's own case), the stored payload's length added; no peer, no WARC-IP-Address."""
    encoded = warc.Capture(
        "http://example.test/", NOON + 0.5, None, 200, "OK", "HTTP/1.1",
        [(b"content-encoding", b"gzip"), (b"Transfer-Encoding", b"chunked"),
         (b"Content-Length", b"30"), (b"ETag", b'"e"')],
    )  # fmt: skip
    http = (
        b"HTTP/1.1 200 OK\r\nX-Crawler-content-encoding: gzip\r\n"
        b"X-Crawler-Transfer-Encoding: chunked\r\nX-Crawler-Content-Length: 30\r\n"
        b'ETag: "e"\r\nContent-Length: 7\r\n\r\n'
    )
    assert warc.response_head(encoded, "<urn:uuid:r>", "ab12", 7, "<urn:uuid:i>") == (
        b"WARC/1.1\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:r>\r\n"
        b"WARC-Date: 2024-12-05T12:00:00.500000Z\r\nWARC-Target-URI: http://example.test/\r\n"
        b"WARC-Warcinfo-ID: <urn:uuid:i>\r\nWARC-Payload-Digest: sha256:ab12\r\n"
        b"Content-Type: application/http;msgtype=response\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(http) + 7) + http
    )


def test_a_reason_phrase_outside_latin_1_is_replaced_not_raised() -> None:
    odd = warc.Capture("http://example.test/", NOON, None, 200, "OK \u2713", "HTTP/1.1", [])
    head = warc.response_head(odd, "<urn:uuid:r>", "ab12", 0, "<urn:uuid:i>")
    assert head.endswith(b"\r\n\r\nHTTP/1.1 200 OK ?\r\n\r\n")


def test_a_revisit_record_byte_for_byte() -> None:
    original = warc.Original(
        "f.warc#9", "<urn:uuid:o>", "http://example.test/old", "2024-12-01T00:00:00.000000Z"
    )
    assert warc.revisit_record(PAGE, "<urn:uuid:v>", "ab12", original, "<urn:uuid:i>") == (
        b"WARC/1.1\r\n"
        b"WARC-Type: revisit\r\n"
        b"WARC-Record-ID: <urn:uuid:v>\r\n"
        b"WARC-Date: 2024-12-05T12:00:00.250000Z\r\n"
        b"WARC-Target-URI: http://example.test/a?b=1\r\n"
        b"WARC-Warcinfo-ID: <urn:uuid:i>\r\n"
        b"WARC-Profile: http://netpreserve.org/warc/1.1/revisit/identical-payload-digest\r\n"
        b"WARC-IP-Address: 192.0.2.7\r\n"
        b"WARC-Payload-Digest: sha256:ab12\r\n"
        b"WARC-Refers-To: <urn:uuid:o>\r\n"
        b"WARC-Refers-To-Target-URI: http://example.test/old\r\n"
        b"WARC-Refers-To-Date: 2024-12-01T00:00:00.000000Z\r\n"
        b"Content-Type: application/http;msgtype=response\r\n"
        b"Content-Length: %d\r\n\r\n" % len(HTTP_HEAD) + HTTP_HEAD + b"\r\n\r\n"
    )  # fmt: skip


def test_a_revisit_of_a_body_in_the_old_layout_names_no_original() -> None:
    record = warc.revisit_record(PAGE, "<urn:uuid:v>", "ab12", None, "<urn:uuid:i>")
    assert b"WARC-Refers-To" not in record
    assert b"WARC-Payload-Digest: sha256:ab12\r\nContent-Type: application/http" in record


def test_a_warcinfo_record_byte_for_byte() -> None:
    info = [("software", "fetcher/1"), ("format", "WARC File Format 1.1")]
    block = b"software: fetcher/1\r\nformat: WARC File Format 1.1\r\n"
    assert warc.warcinfo_record("f.warc", "<urn:uuid:i>", info, NOON + 0.125) == (
        b"WARC/1.1\r\n"
        b"WARC-Type: warcinfo\r\n"
        b"WARC-Record-ID: <urn:uuid:i>\r\n"
        b"WARC-Date: 2024-12-05T12:00:00.125000Z\r\n"
        b"WARC-Filename: f.warc\r\n"
        b"Content-Type: application/warc-fields\r\n"
        b"Content-Length: %d\r\n\r\n" % len(block) + block + b"\r\n\r\n"
    )  # fmt: skip


def test_a_request_record_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request line with path and query, Host, the headers sent (a secret's value as
    ***), the body; its own record id, and concurrent to the response's."""
    monkeypatch.setattr(warc, "record_id", lambda: "<urn:uuid:q>")
    post = warc.Capture(
        "http://example.test/form?x=1", NOON, "192.0.2.7", 201, "Created", "HTTP/1.1", [],
        "POST", [("Content-Type", "text/plain"), ("Authorization", "Bearer s3cret")], b"k=v",
    )  # fmt: skip
    block = (
        b"POST /form?x=1 HTTP/1.1\r\nHost: example.test\r\nContent-Type: text/plain\r\n"
        b"Authorization: ***\r\n\r\nk=v"
    )
    assert warc.request_record(post, "<urn:uuid:r>", "<urn:uuid:i>") == (
        b"WARC/1.1\r\n"
        b"WARC-Type: request\r\n"
        b"WARC-Record-ID: <urn:uuid:q>\r\n"
        b"WARC-Date: 2024-12-05T12:00:00.000000Z\r\n"
        b"WARC-Target-URI: http://example.test/form?x=1\r\n"
        b"WARC-Warcinfo-ID: <urn:uuid:i>\r\n"
        b"WARC-Concurrent-To: <urn:uuid:r>\r\n"
        b"Content-Type: application/http;msgtype=request\r\n"
        b"Content-Length: %d\r\n\r\n" % len(block) + block + b"\r\n\r\n"
    )  # fmt: skip


def test_a_request_to_the_root_with_an_empty_body_and_an_odd_header() -> None:
    """The path / when the URL has none; a header value outside Latin-1 replaced, not raised;
    an empty body is nothing after the blank line."""
    bare = warc.Capture(
        "http://example.test", NOON, None, 200, "OK", "HTTP/1.1", [], "PUT",
        [("X-Mark", "ok \u2713")], b"",
    )  # fmt: skip
    record = warc.request_record(bare, "<urn:uuid:r>", "<urn:uuid:i>")
    assert record.endswith(
        b"\r\n\r\nPUT / HTTP/1.1\r\nHost: example.test\r\nX-Mark: ok ?\r\n\r\n\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("random", "expected"),
    [
        (b"\x00" * 16, "<urn:uuid:00000000-0000-4000-8000-000000000000>"),
        (b"\xff" * 16, "<urn:uuid:ffffffff-ffff-4fff-bfff-ffffffffffff>"),
        (bytes(range(16)), "<urn:uuid:00010203-0405-4607-8809-0a0b0c0d0e0f>"),
    ],
)
def test_a_record_id_is_a_version_4_uuid_urn(
    monkeypatch: pytest.MonkeyPatch, random: bytes, expected: str
) -> None:
    """Sixteen random bytes, the version (4) and variant (RFC 4122) bits set, as uuid4 does."""
    asked: list[int] = []

    def urandom(n: int) -> bytes:
        asked.append(n)
        return random[:n]

    monkeypatch.setattr(os, "urandom", urandom)
    rid = warc.record_id()
    assert rid == expected and asked == [16]
    assert str(uuid.UUID(bytes=random, version=4)) == rid[10:-1]


def test_record_ids_differ() -> None:
    ids = {warc.record_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"<urn:uuid:[0-9a-f-]{36}>", rid) for rid in ids)


def test_warc_dates_are_utc_with_microseconds() -> None:
    """Against datetime, across seconds and within one (a second's prefix is cached)."""
    for unix in (0.0, NOON + 0.5, NOON + 0.75, NOON + 1.5, NOON + 1.0, 86_399.25, NOON + 0.5):
        moment = datetime.datetime.fromtimestamp(unix, datetime.UTC)
        assert warc.warc_date(unix) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_http_payload() -> None:
    """The block past the first blank line (a payload may hold blank lines of its own); no
    blank line, no payload."""
    assert warc.http_payload(HTTP_HEAD + b"a\r\n\r\nb") == b"a\r\n\r\nb"
    assert warc.http_payload(b"\r\n\r\nbody") == b"body"
    assert warc.http_payload(b"HTTP/1.1 200 OK") == b""


def response(payload: bytes, gzipped: bool = False, url: str = "http://example.test/") -> bytes:
    """A whole response record of `payload` (one gzip member if `gzipped`)."""
    capture = warc.Capture(url, NOON, None, 200, "OK", "HTTP/1.1", [])
    digest = hashlib.sha256(payload).hexdigest()
    record = warc.response_head(capture, "<urn:uuid:r>", digest, len(payload), "<urn:uuid:i>")
    record += payload + warc.END
    return warc.gzip_member(record) if gzipped else record


@pytest.mark.parametrize("gzipped", [False, True])
def test_records_longer_than_a_read_are_read_whole(gzipped: bool) -> None:
    """A payload that does not compress, past the readers' 1 MB read, and a header past their
    4 kB read even compressed (a URL of random hex): each reader joins its reads instead of
    keeping the last, and scan steps over every record, each at its own offset."""
    payload = os.urandom(2_500_000)
    long_url = "http://example.test/" + os.urandom(10_000).hex()
    records = [response(payload, gzipped), response(b"tail", gzipped, long_url)]
    records.append(response(b"last", gzipped))
    data = io.BytesIO(b"".join(records))
    first, second = (len(r) for r in records[:2])
    assert warc.http_payload(warc.read_record(data, 0, gzipped).block) == payload
    assert warc.read_fields(data, first, gzipped)["WARC-Target-URI"] == long_url
    back = warc.read_record(data, first, gzipped)
    assert back.type == "response" and back.fields["WARC-Target-URI"] == long_url
    assert list(warc.scan(data, gzipped)) == [
        (0, first, "response"), (first, first + second, "response"),
        (first + second, len(data.getvalue()), "response"),
    ]  # fmt: skip
    assert len(list(ArchiveIterator(io.BytesIO(data.getvalue()), check_digests="raise"))) == 3


@pytest.mark.parametrize("gzipped", [False, True])
def test_no_record_where_none_starts(gzipped: bool) -> None:
    """An offset past the end, or into nothing WARC, says where it looked."""
    data = io.BytesIO(response(b"x", gzipped))
    end = len(data.getvalue())
    with pytest.raises(ValueError, match=f"^no record at {end}$"):
        warc.read_fields(data, end, gzipped)
    with pytest.raises(ValueError, match=f"(no|a torn) record at {end}$"):
        warc.read_record(data, end, gzipped)


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_header_past_64_kb_is_no_record_of_ours(gzipped: bool) -> None:
    """The readers stop looking for a header's end at 64 kB (fetcher's longest is two URLs of
    4 kB): a longer one is refused, not read to the end of the file."""
    data = io.BytesIO(response(b"x", gzipped, "http://example.test/" + "a" * 70_000))
    with pytest.raises(ValueError, match=r"^no record at 0$"):
        warc.read_fields(data, 0, gzipped)


def test_a_gzip_member_without_a_whole_header_is_no_record() -> None:
    data = io.BytesIO(warc.gzip_member(b"WARC/1.1\r\nWARC-Type: response\r\n"))
    with pytest.raises(ValueError, match=r"^no record at 0$"):
        warc.read_record(data, 0, True)


def test_something_else_is_not_a_warc_record() -> None:
    data = io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ValueError, match=r"^not a WARC record: 'HTTP/1.1 200 OK'$"):
        warc.read_record(data, 0, False)


def test_a_record_without_a_type_reads_as_typeless() -> None:
    data = io.BytesIO(b"WARC/1.1\r\nContent-Length: 2\r\n\r\nab\r\n\r\n")
    record = warc.read_record(data, 0, False)
    assert (record.type, record.fields, record.block) == ("", {"Content-Length": "2"}, b"ab")
    assert list(warc.scan(data, False)) == [(0, len(data.getvalue()), "")]
