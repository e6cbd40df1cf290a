"""Submission: lines in, jobs queued, each bad line rejected with its number and reason.

A line is a bare URL or a job object (JSON Lines, `fetcher.jobspec`); blank lines and `#`
comments are skipped. Any front end calls `submit_lines` (the `submit` command does, with a
file, stdin or its arguments). Lines are read in chunks, and a chunk's insert runs while the
next one is read. A line may come as bytes (a file, stdin): one that is not UTF-8 is rejected
with its bytes shown escaped, and the lines around it are still queued. A rejected job object
is never echoed (its headers may hold a secret): its number and the reason are.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from fetcher.errors import InvalidJob, InvalidURL
from fetcher.jobqueue import JobQueue
from fetcher.jobspec import PLAIN, JobDefaults, JobLimits, read_job
from fetcher.model import JobRequest, Recurrence, Submitted
from fetcher.urls import Target, parse_url

__all__ = ["SubmitReport", "printable", "submit_lines"]

CHUNK = 100_000
_duplicate = operator.attrgetter("duplicate")
_YIELD_EVERY = 1024
_CREDENTIALS = re.compile(r"//[^/@\s]*@")

# (line number, the line as it may be shown or None, the reason)
OnReject = Callable[[int, str | None, str], None]
# a chunk's line numbers, and what the queue did with each of those lines
OnAccept = Callable[[list[int], list[Submitted]], None]


@dataclass(slots=True)
class SubmitReport:
    queued: int = 0  # new jobs
    duplicates: int = 0  # valid, but already queued, retrying or running
    rejected: int = 0


async def submit_lines(
    queue: JobQueue,
    lines: Iterable[str | bytes],
    on_reject: OnReject,
    *,
    limits: JobLimits,
    defaults: JobDefaults = PLAIN,
    on_accept: OnAccept | None = None,
    chunk: int = CHUNK,
) -> SubmitReport:
    """Queue every valid line of `lines`; `on_reject` for each bad one, `on_accept` for each
    chunk of queued or duplicate ones, in order. Everything counted as queued is committed
    when this returns."""
    report = SubmitReport()
    inserting: asyncio.Task[None] | None = None  # the last chunk goes in while the next is read

    async def insert(numbers: list[int], jobs: list[JobRequest]) -> None:
        answers = await queue.submit(jobs)
        duplicates = sum(map(_duplicate, answers))
        report.duplicates += duplicates
        report.queued += len(answers) - duplicates
        if on_accept is not None:
            on_accept(numbers, answers)

    try:
        numbers: list[int] = []
        batch: list[JobRequest] = []
        for n, raw in enumerate(itertools.chain(lines, [None]), start=1):
            if n % _YIELD_EVERY == 0:
                # the insert task moves on only when this loop yields: it takes a turn per
                # statement, and the database runs each in its own thread while this one parses
                await asyncio.sleep(0)
            if raw is not None:
                job = _read_line(raw, n, limits, defaults, report, on_reject)
                if job is not None:
                    numbers.append(n)
                    batch.append(job)
            if len(batch) >= chunk or (raw is None and batch):
                if inserting is not None:
                    await inserting
                inserting = asyncio.create_task(insert(numbers, batch))
                numbers, batch = [], []
        if inserting is not None:
            await inserting
            inserting = None
    finally:
        if inserting is not None:  # an error while reading: the chunk under way still lands
            await asyncio.wait([inserting])
    return report


def _read_line(
    raw: str | bytes,
    number: int,
    limits: JobLimits,
    defaults: JobDefaults,
    report: SubmitReport,
    on_reject: OnReject,
) -> JobRequest | None:
    """The job of one line; None for a blank line, a comment, or a line rejected."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.rejected += 1
            reason = f"not UTF-8 (byte {raw[exc.start]:#04x} at {exc.start})"
            on_reject(number, None if raw.lstrip()[:1] == b"{" else printable(raw), reason)
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
        on_reject(number, printable(line), "not UTF-8")
        return None
    try:
        if line.startswith("{"):
            return read_job(_json(line), limits, defaults)
        if defaults is PLAIN:
            return JobRequest(parse_url(line))
        return _bare(parse_url(line), defaults)
    except (InvalidJob, InvalidURL) as exc:
        report.rejected += 1
        on_reject(number, None if line.startswith("{") else printable(line), exc.reason)
        return None


def _json(line: str) -> object:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidJob(f"not JSON: {str(exc).splitlines()[0][:80]}") from None


def _bare(target: Target, defaults: JobDefaults) -> JobRequest:
    """A bare URL's job: the `--method`, `--header`, … of the command, or a plain GET."""
    return JobRequest(
        target,
        defaults.method,
        defaults.headers,
        priority=defaults.priority,
        metadata=defaults.metadata,
        recurrence=None if defaults.every is None else Recurrence(defaults.every),
    )


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
