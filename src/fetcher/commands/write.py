"""The commands that change the queue: `submit` (URLs and job objects, line by line),
`cancel` and `retry`. They open the queue as the daemon does, and commit before they return.
(asyncio is imported where it runs: the parser loads this module for every command, the read
ones too.)"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING

from fetcher.commands.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from fetcher.errors import InvalidJob

if TYPE_CHECKING:
    from fetcher.config import Settings
    from fetcher.jobqueue import JobQueue, Redrive
    from fetcher.jobspec import JobDefaults
    from fetcher.model import Submitted

__all__ = ["cmd_cancel", "cmd_retry", "cmd_submit"]


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    if not args.urls and not args.file:
        print("fetcher submit: give URLs or -f FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        defaults = _defaults(args, settings)
    except InvalidJob as exc:
        print(f"fetcher submit: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    lines: Iterable[str | bytes] = args.urls
    if args.file:
        # bytes: a line that is not UTF-8 is rejected by itself, the rest still queued
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        lines = itertools.chain(args.urls, _lines_of(stream))
    # A bulk submit holds a million small tuples at a time and makes no reference cycle: the
    # cyclic collector would scan them all again and again for nothing (BENCHMARKS.md, "submit")
    gc.disable()
    import asyncio

    return asyncio.run(_submit(settings, lines, defaults, as_json=args.json))


def _defaults(args: argparse.Namespace, settings: Settings) -> JobDefaults:
    """What `--method`, `--header`, `--priority`, `--metadata` and `--every` give every line
    that does not say otherwise; checked as a job's own fields are."""
    from fetcher.jobspec import JobDefaults, read_headers, read_job

    headers = []
    for line in args.header or []:
        name, colon, value = line.partition(":")
        if not colon:
            raise InvalidJob(f"--header: 'Name: value' expected (got {name.strip()[:40]!r}: …)")
        headers.append((name.strip(), value.strip()))
    try:
        metadata = json.loads(args.metadata) if args.metadata is not None else None
    except json.JSONDecodeError:
        raise InvalidJob("--metadata: not JSON") from None
    probe = {"url": "http://example.com/", "method": args.method, "priority": args.priority}
    if metadata is not None:
        probe["metadata"] = metadata
    if args.every is not None:
        probe["every"] = args.every
    checked = read_job(probe, settings.job_limits)
    every = checked.recurrence.every_s if checked.recurrence is not None else None
    return JobDefaults(
        checked.method, read_headers(headers), checked.priority, checked.metadata, every
    )


def _lines_of(stream: IO[bytes]) -> Iterator[bytes]:
    with stream:
        yield from stream


async def _submit(
    settings: Settings, lines: Iterable[str | bytes], defaults: JobDefaults, *, as_json: bool
) -> int:
    from fetcher.submission import submit_lines

    out = sys.stdout

    def reject(number: int, shown: str | None, reason: str) -> None:
        where = f"line {number}" + (f": {shown}" if shown is not None else "")
        print(f"rejected: {where}: {reason}", file=sys.stderr)
        if as_json:
            out.write(json.dumps({"line": number, "error": reason}) + "\n")

    def accept(numbers: list[int], answers: list[Submitted]) -> None:
        if as_json:
            for number, (job_id, duplicate) in zip(numbers, answers, strict=True):
                shown = {"line": number, "id": job_id, "duplicate": duplicate}
                out.write(json.dumps(shown) + "\n")
        else:  # one write a chunk: a bulk submit answers a million lines
            out.write("".join(f"{job_id}\n" for job_id, _ in answers))

    queue = await _open(settings)
    try:
        report = await submit_lines(
            queue, lines, reject, limits=settings.job_limits, defaults=defaults, on_accept=accept
        )
    finally:
        await queue.close()
    print(
        f"queued {report.queued}, already queued {report.duplicates}, rejected {report.rejected}",
        file=sys.stderr,
    )
    return EXIT_FAILURE if report.rejected else EXIT_OK


async def _open(settings: Settings) -> JobQueue:
    from fetcher.backends import open_queue

    # a 32 MiB page cache: the fingerprint index of a big queue
    return await open_queue(
        settings.db_location,
        cache_mib=32,
        busy_timeout_s=settings.db_busy_timeout,
        webhook_url=settings.webhook_url,
    )


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel jobs by id: queued or retrying ones end `cancelled` at once; running ones end
    after their current request. Exit 1 if one was unknown or had already ended."""
    import asyncio

    return asyncio.run(_cancel(settings, args.ids, as_json=args.json))


async def _cancel(settings: Settings, ids: list[int], *, as_json: bool) -> int:
    from fetcher.model import FINAL_STATES, JobState

    queue = await _open(settings)
    try:
        before = await queue.cancel(ids)
    finally:
        await queue.close()
    ok = True
    for job_id in ids:
        was = before.get(job_id)
        if was is None:
            answer = "unknown"
        elif was in FINAL_STATES:
            answer = f"already {was.value}"
        elif was is JobState.RUNNING:
            answer = "cancelling: it ends after its current request"
        else:
            answer = "cancelled"
        ok = ok and (was is not None and was not in FINAL_STATES)
        if as_json:
            shown = {"id": job_id, "was": was.value if was else None, "answer": answer}
            print(json.dumps(shown))
        else:
            print(f"{job_id}: {answer}")
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Queue finished jobs again as new runs (`--dry-run`: count them); prints how many."""
    import asyncio
    import time

    from fetcher.jobqueue import Redrive
    from fetcher.jobspec import duration

    try:
        since = None if args.since is None else time.time() - duration(args.since, "--since")
    except InvalidJob as exc:
        print(f"fetcher retry: {exc.reason}", file=sys.stderr)
        return EXIT_USAGE
    which = Redrive(args.state, args.host, since, args.error)
    return asyncio.run(_retry(settings, which, dry_run=args.dry_run, as_json=args.json))


async def _retry(settings: Settings, which: Redrive, *, dry_run: bool, as_json: bool) -> int:
    queue = await _open(settings)
    try:
        count = await queue.redrive(which, dry_run=dry_run)
    finally:
        await queue.close()
    if as_json:
        print(json.dumps({"count": count, "dry_run": dry_run}))
    else:
        print(f"{'would queue' if dry_run else 'queued'} {count} {which.state} job(s) again")
    return EXIT_OK
