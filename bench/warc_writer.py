"""warcio's WARC writer against fetcher's hand-built records (`fetcher.warc`), and gzip members:
µs to write one response record of 1 kB, 100 kB and 1 MB (random bodies) to a file; and what
the sha256 of such a body alone costs (every kept body is hashed once).

    .venv/bin/python bench/warc_writer.py        # needs warcio (the dev extra)
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from fetcher import warc


def with_warcio(out: io.BufferedWriter, body: bytes, n: int, gzip: bool) -> float:
    writer = WARCWriter(out, gzip=gzip, warc_version="1.1")
    started = time.perf_counter()
    for i in range(n):
        http = StatusAndHeaders(
            "200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))],
            protocol="HTTP/1.1",
        )  # fmt: skip
        record = writer.create_warc_record(
            f"http://example.com/{i}", "response", payload=io.BytesIO(body), http_headers=http,
            warc_headers_dict={"WARC-IP-Address": "127.0.0.2"},
        )  # fmt: skip
        writer.write_record(record)
    return (time.perf_counter() - started) / n * 1e6


def by_hand(out: io.BufferedWriter, body: bytes, n: int, gzip: bool) -> float:
    started = time.perf_counter()
    for i in range(n):
        capture = warc.Capture(
            f"http://example.com/{i}", time.time(), "127.0.0.2", 200, "OK", "HTTP/1.1",
            [(b"Content-Type", b"text/html"), (b"Content-Length", b"%d" % len(body))],
        )  # fmt: skip
        digest = hashlib.sha256(body).hexdigest()
        head = warc.response_head(capture, warc.record_id(), digest, len(body), "<urn:uuid:x>")
        record = [head, body, warc.END]
        out.write(warc.gzip_member(b"".join(record)) if gzip else b"".join(record))
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    print("| body | warcio | by hand | warcio, gzip | by hand, gzip | sha256 alone |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for size, n in ((1_000, 2_000), (100_000, 300), (1_000_000, 40)):
            body = os.urandom(size // 2).hex().encode()  # hex: compresses as text does, a bit
            row = []
            for gzip in (False, True):
                for make in (with_warcio, by_hand):
                    with open(os.path.join(work, "out.warc"), "wb") as out:
                        row.append(make(out, body, n, gzip))
            started = time.perf_counter()
            for _ in range(n):
                hashlib.sha256(body).digest()
            row.append((time.perf_counter() - started) / n * 1e6)
            print(f"| {size:,} B | " + " | ".join(f"{v:,.0f} µs" for v in row) + " |")


if __name__ == "__main__":
    main()
