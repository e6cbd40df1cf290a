"""The commands that only read the database (and the body directory): `stats`, `status`,
`results`, `robots`, `webhooks`, `body`, `warc`. They need FETCHER_DB (and FETCHER_BODY_DIR)
and nothing else (no settings, no daemon), and answer in tens of ms."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from fetcher import __version__, stats
from fetcher.commands.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    console,
    duration,
    iso,
    reader,
)
from fetcher.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from fetcher.jobqueue import QueueReader
    from fetcher.locations import Location

__all__ = [
    "cmd_body", "cmd_results", "cmd_robots", "cmd_stats", "cmd_status", "cmd_warc", "cmd_webhooks",
]  # fmt: skip


def cmd_stats(args: argparse.Namespace, path: Location) -> int:
    db = reader(path)
    if args.by == "minute" or args.since:
        since = time.time() - duration(args.since or "1h")
        series = stats.minute_series(db, since=since, host=args.host)
        if args.json:
            print(json.dumps(series))
        elif args.csv:
            sys.stdout.write(stats.render_csv(series, list(series[0]) if series else ["host"]))
        else:
            stats.render_series(series, since, time.time(), console())
        return EXIT_OK
    try:
        rows = stats.host_stats(db, host=args.host, sort=args.sort)
    except ValueError as exc:
        print(f"fetcher stats: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(rows))
    elif args.csv:
        sys.stdout.write(stats.render_csv(rows, stats.STAT_FIELDS))
    elif args.watch:
        _watch(db, args, console())
    else:
        stats.render_table(rows, console())
    return EXIT_OK


def _watch(db: QueueReader, args: argparse.Namespace, shown_on: Console) -> None:
    """The table, refreshed in place every 2 s until Ctrl-C."""
    from rich.live import Live

    def frame() -> Table:
        return stats.host_table(stats.host_stats(db, host=args.host, sort=args.sort))

    with Live(frame(), console=shown_on, auto_refresh=False) as live:
        while True:
            time.sleep(2)
            live.update(frame(), refresh=True)


def cmd_robots(args: argparse.Namespace, path: Location) -> int:
    """The cached verdict of the origin(s) of a host key or URL; for a URL, whether the
    daemon may fetch it (by FETCHER_USER_AGENT's product token)."""
    from fetcher.config import product_token
    from fetcher.errors import InvalidURL
    from fetcher.robots import SiteRules, origin_of
    from fetcher.urls import parse_url

    text = args.target
    try:
        target = parse_url(text if "://" in text else f"http://{text}/")
    except InvalidURL as exc:
        print(f"fetcher robots: {text}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    url = target.url if "://" in text else None
    origins = (
        [origin_of(target)] if url else [f"{s}://{target.host_key}" for s in ("http", "https")]
    )
    try:
        token = product_token(os.environ.get("FETCHER_USER_AGENT", f"fetcher/{__version__}"))
    except ValueError as exc:
        raise ConfigError(f"FETCHER_USER_AGENT: {exc}") from None
    verdicts = reader(path).robots(origins)
    rows = []
    for v in verdicts:
        row: dict[str, Any] = {
            "origin": v.origin,
            "fetched_at": iso(v.fetched_at),
            "status": v.status,
            "size": v.size,
            "crawl_delay": v.crawl_delay,
            "usable": v.usable,
            "rules": v.body,
        }
        if url is not None:
            row["url"], row["allowed"] = url, SiteRules(v, token).allows(url)
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no robots.txt cached for {' or '.join(origins)}")
    for row in [] if args.json else rows:
        print(
            f"{row['origin']}: status {row['status']}, {row['size']} bytes, fetched"
            f" {row['fetched_at']}, crawl delay {row['crawl_delay'] or '-'}"
            f"{'' if row['usable'] else ' (not usable: everything waits, asked again later)'}"
        )
        if "allowed" in row:
            print(f"{row['url']}: {'allowed' if row['allowed'] else 'disallowed'} for {token!r}")
        if row["rules"]:
            print(row["rules"].rstrip())
    return EXIT_OK if rows else EXIT_FAILURE


def cmd_status(args: argparse.Namespace, path: Location) -> int:
    db = reader(path)
    summary = stats.status(db)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>16}  {'-' if value is None else value}")
    return EXIT_OK


def cmd_results(args: argparse.Namespace, path: Location) -> int:
    db = reader(path)
    since = time.time() - duration(args.since) if args.since else None
    out = sys.stdout
    shown = stats.results(
        db, state=args.state, host=args.host, since=since, limit=args.limit, job_id=args.job_id
    )
    found = False
    for row in shown:
        out.write(json.dumps(row) + "\n")
        found = True
    if args.job_id is not None and not found:
        print(f"fetcher results: no result for job {args.job_id} (not ended, or unknown)",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    return EXIT_OK


def cmd_webhooks(args: argparse.Namespace, path: Location) -> int:
    """Webhook deliveries still pending and those given up (`--state` for one of them, or
    `delivered`), oldest first: one JSON object a line with --json, a table otherwise."""
    states = [args.state] if args.state else ["pending", "failed"]
    rows = reader(path).webhooks(states, args.limit)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return EXIT_OK
    if not rows:
        print(f"no webhook deliveries {' or '.join(states)}")
        return EXIT_OK
    from rich.table import Table

    table = Table("event", "url", "state", "tries", "last", "next try", "created")
    for row in rows:
        last = row["last_error"] or (str(row["last_status"]) if row["last_status"] else "-")
        upcoming = row["next_attempt_at"] if row["state"] == "pending" else "-"
        table.add_row(
            row["event_id"], row["url"], row["state"], str(row["attempts"]), last,
            upcoming or "-", row["created_at"],
        )  # fmt: skip
    console().print(table)
    return EXIT_OK


def cmd_body(args: argparse.Namespace, path: Location) -> int:
    """The kept body of a job's latest result, byte for byte, to stdout."""
    from fetcher.archive import read_body
    from fetcher.locations import body_directory

    found = reader(path).body(args.id)
    if found is None:
        print(f"fetcher body: job {args.id} has no result", file=sys.stderr)
        return EXIT_FAILURE
    if found[0] is None:
        print(f"fetcher body: job {args.id} kept no body", file=sys.stderr)
        return EXIT_FAILURE
    data = read_body(body_directory(path, args.env_file), found[0])
    if data is None:
        print(f"fetcher body: the body of job {args.id} is gone ({found[0]})", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_warc(args: argparse.Namespace, path: Location) -> int:
    """The WARC files in the body directory: size, state and record counts."""
    from fetcher.archive import count_records, warc_files
    from fetcher.locations import body_directory

    root = body_directory(path, args.env_file)
    rows = []
    for found in warc_files(root):
        counts = count_records(root / found.name)
        rows.append({
            "file": found.name, "bytes": found.size, "modified": iso(found.modified),
            "state": "open" if found.open else "complete", "records": sum(counts.values()),
            **{kind: counts.get(kind, 0) for kind in ("response", "revisit", "request")},
        })  # fmt: skip
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print(f"no WARC files in {root}")
        return EXIT_OK
    from rich.table import Table

    table = Table("file", "bytes", "state", "records", "response", "revisit", "request",
                  "modified", title=str(root))  # fmt: skip
    for row in rows:
        table.add_row(*(str(row[key]) for key in (
            "file", "bytes", "state", "records", "response", "revisit", "request", "modified"
        )))  # fmt: skip
    console().print(table)
    return EXIT_OK
