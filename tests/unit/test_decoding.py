"""Decoding under a cap: every coding and stack of codings round-trips however the body is cut
into chunks, no piece is larger than one step, and a bomb stops one step past the cap."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.decoding import ACCEPT_ENCODING, CappedDecoder
from fetcher.errors import BodyTooLarge

STEP = 64 * 1024
PIECE = 2 * STEP  # brotli's output limit is where its buffer stops growing: up to 1.5 steps


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODE = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "raw-deflate": _raw_deflate,  # sent as "deflate" by some servers
    "br": brotli.compress,
    "identity": lambda data: data,
}


def _encode(data: bytes, codings: list[str]) -> tuple[bytes, str]:
    for coding in codings:
        data = ENCODE[coding](data)
    header = ", ".join("deflate" if c == "raw-deflate" else c for c in codings)
    return data, header


def _decode(body: bytes, header: str, chunk: int, cap: int = 10**9) -> tuple[bytes, list[int]]:
    decoder = CappedDecoder(header, cap)
    pieces = [p for i in range(0, len(body), chunk) for p in decoder.feed(body[i : i + chunk])]
    assert decoder.decoded == sum(len(p) for p in pieces)
    return b"".join(pieces), [len(p) for p in pieces]


@pytest.mark.parametrize("coding", sorted(ENCODE))
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_each_coding_round_trips_in_any_chunks(coding: str, chunk: int) -> None:
    """Byte by byte, in odd chunks and whole."""
    data = b"fetcher " * 3000 + bytes(range(256))
    body, header = _encode(data, [coding])
    assert _decode(body, header, chunk)[0] == data


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=5000),
    codings=st.lists(st.sampled_from(sorted(ENCODE)), max_size=3),
    chunk=st.integers(1, 600),
)
def test_stacked_codings_round_trip(data: bytes, codings: list[str], chunk: int) -> None:
    """`gzip, br` is br applied last: decoded in reverse order, whatever the chunking."""
    body, header = _encode(data, codings)
    assert _decode(body, header.upper(), chunk)[0] == data  # codings are case-insensitive


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "br"])
def test_no_piece_is_larger_than_one_step(coding: str) -> None:
    """4 MB of zeros compress to a few kB; whole, they come out in pieces of about 64 KiB
    (each is checked against the cap before the next is made), none of it lost."""
    data = bytes(4 * 1024 * 1024)
    body, header = _encode(data, [coding])
    decoded, sizes = _decode(body, header, len(body))
    assert decoded == data
    assert max(sizes) <= PIECE and len(sizes) >= len(data) // PIECE


@pytest.mark.parametrize("codings", [["gzip"], ["br"], ["gzip", "gzip"], ["deflate", "br"]])
def test_a_bomb_stops_one_step_past_the_cap(codings: list[str]) -> None:
    """64 MB of zeros under a 1 MB cap: BodyTooLarge, with at most one step more decoded."""
    body, header = _encode(bytes(64 * 1024 * 1024), codings)
    decoder = CappedDecoder(header, 1_000_000)
    with pytest.raises(BodyTooLarge, match="body exceeds 1000000 bytes"):
        for _ in decoder.feed(body):
            pass
    assert 1_000_000 < decoder.decoded <= 1_000_000 + PIECE


def test_a_body_exactly_at_the_cap_is_kept() -> None:
    decoder = CappedDecoder("", 10)
    assert list(decoder.feed(b"0123456789")) == [b"0123456789"]
    with pytest.raises(BodyTooLarge):
        list(decoder.feed(b"x"))


def test_a_body_past_the_cap_gives_its_bytes_up_to_the_cap_then_fails() -> None:
    """What a caller that keeps a prefix (robots.txt) needs: every byte up to the cap."""
    decoder, kept = CappedDecoder("", 10), bytearray()

    def keep(raw: bytes) -> None:
        for piece in decoder.feed(raw):
            kept.extend(piece)

    keep(b"01234")
    with pytest.raises(BodyTooLarge):
        keep(b"56789abc")
    assert kept == b"0123456789"


def test_an_unknown_coding_passes_the_body_through_untouched() -> None:
    """A coding fetcher did not ask for (and cannot decode) is kept as sent, whole."""
    body = gzip.compress(b"hello")
    assert _decode(body, "gzip, zstd", 3)[0] == body
    assert _decode(b"plain", "identity", 2)[0] == b"plain"
    assert _decode(b"plain", " , ", 2)[0] == b"plain"


def test_an_empty_first_chunk_does_not_decide_the_deflate_flavour() -> None:
    """Raw deflate is told from zlib-wrapped by the first byte of data, not of a chunk."""
    for coding in ("deflate", "raw-deflate"):
        body, header = _encode(b"abc" * 100, [coding])
        decoder = CappedDecoder(header, 10**6)
        out = b"".join([*decoder.feed(b""), *decoder.feed(body[:1]), *decoder.feed(body[1:])])
        assert out == b"abc" * 100, coding


@pytest.mark.parametrize("header", ["gzip", "deflate", "br"])
def test_a_corrupt_body_is_an_undecodable_body(header: str) -> None:
    body = b"\x1f\x8b\x08\x00" + b"\xff" * 64 if header == "gzip" else b"\x78\x9c" + b"\xff" * 64
    if header == "br":
        body = b"\xff" * 64
    with pytest.raises(ValueError, match=r"^undecodable body: "):
        list(CappedDecoder(header, 10**6).feed(body))


def test_what_fetcher_asks_for_is_what_it_decodes() -> None:
    assert ACCEPT_ENCODING == "gzip, deflate, br"
    for coding in ACCEPT_ENCODING.split(", "):
        body, header = _encode(b"x" * 10, [coding])
        assert _decode(body, header, 4)[0] == b"x" * 10


def test_data_after_the_end_of_a_gzip_member_is_ignored() -> None:
    """Bytes after the end of the compressed stream are not decoded as more body."""
    body = gzip.compress(b"body") + b"trailing junk"
    assert _decode(body, "gzip", 1)[0] == b"body"
    assert _decode(body, "gzip", len(body))[0] == b"body"
