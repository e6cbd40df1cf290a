"""Submission: lines in, jobs queued, each bad line rejected with its reason.

Any front end calls `submit_lines` (the `submit` command does, with a file, stdin or its
arguments). Lines are parsed in chunks, and a chunk's insert runs while the next one is parsed.
A line may come as bytes (a file, stdin): one that is not UTF-8 is rejected with its bytes
shown escaped, like any other bad line, and the lines around it are still queued. A string
holding lone surrogates (command-line bytes that were not UTF-8, as Python passes them) is
rejected the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fetcher.errors import InvalidURL
from fetcher.jobqueue import JobQueue
from fetcher.urls import Target, parse_url

__all__ = ["SubmitReport", "printable", "submit_lines"]

CHUNK = 100_000
_YIELD_EVERY = 1024
_CREDENTIALS = re.compile(r"//[^/@\s]*@")


@dataclass(slots=True)
class SubmitReport:
    queued: int = 0  # new jobs
    duplicates: int = 0  # valid, but already queued, retrying or running
    rejected: int = 0


async def submit_lines(
    queue: JobQueue,
    lines: Iterable[str | bytes],
    on_reject: Callable[[str, str], None],
    *,
    chunk: int = CHUNK,
) -> SubmitReport:
    """Queue every valid URL of `lines` (blank lines and `#` comments skipped); call
    `on_reject(shown_line, reason)` for each bad one. Everything counted as queued is committed
    when this returns."""
    report = SubmitReport()
    offered = 0
    inserting: asyncio.Task[int] | None = None  # the last chunk goes in while the next is read
    try:
        batch: list[Target] = []
        for n, raw in enumerate(itertools.chain(lines, [None])):
            if n % _YIELD_EVERY == 0:
                # the insert task moves on only when this loop yields: it takes a turn per
                # statement, and the database runs each in its own thread while this one parses
                await asyncio.sleep(0)
            if raw is not None:
                target = _parse_line(raw, report, on_reject)
                if target is not None:
                    batch.append(target)
            if len(batch) >= chunk or (raw is None and batch):
                if inserting is not None:
                    report.queued += await inserting
                inserting = asyncio.create_task(queue.submit(batch))
                offered += len(batch)
                batch = []
        if inserting is not None:
            report.queued += await inserting
            inserting = None
    finally:
        if inserting is not None:  # an error while parsing: the chunk under way still lands
            await asyncio.wait([inserting])
    report.duplicates = offered - report.queued
    return report


def _parse_line(
    raw: str | bytes, report: SubmitReport, on_reject: Callable[[str, str], None]
) -> Target | None:
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.rejected += 1
            on_reject(printable(raw), f"not UTF-8 (byte {raw[exc.start]:#04x} at {exc.start})")
            return None
    else:
        text = raw
    line = text.strip()
    if not line or line.startswith("#"):
        return None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8, escaped by Python
        report.rejected += 1
        on_reject(printable(line), "not UTF-8")
        return None
    try:
        return parse_url(line)
    except InvalidURL as exc:
        report.rejected += 1
        on_reject(printable(line), exc.reason)
        return None


def printable(raw: str | bytes) -> str:
    """A rejected line as it may be shown: escaped (a byte that is not UTF-8 as `\\xNN`),
    credentials hidden, cut to 200 characters."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    text = _CREDENTIALS.sub("//***@", text.strip())
    shown = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape keeps it
            shown.append(f"\\x{code - 0xDC00:02x}")
        else:
            shown.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(shown)[:200]
