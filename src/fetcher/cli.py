"""The `fetcher` command: one function per subcommand; exit 0 ok, 1 failure, 2 usage, 78 config."""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fetcher import __version__, stats
from fetcher.errors import ConfigError, StoreUnavailable
from fetcher.locations import Location, database_location, is_postgres_url, location_of

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from fetcher.config import Settings
    from fetcher.jobqueue import QueueReader

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(_sort_values_joined(sys.argv[1:] if argv is None else list(argv)))
    try:
        if args.read_only:  # stats, status, results: only the database is needed
            return int(args.command(args, args.db or database_location(args.env_file)))
        from fetcher.config import load_settings

        settings = load_settings(args.env_file)
        if args.db is not None:
            settings = settings.model_copy(update={"db": str(args.db)})
        return int(args.command(args, settings))
    except ConfigError as exc:
        _report_config_error(args, exc)
        return EXIT_CONFIG
    except FileNotFoundError as exc:
        print(f"fetcher: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except StoreUnavailable as exc:
        print(f"fetcher: database unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _sort_values_joined(argv: list[str]) -> list[str]:
    """`--sort -requests` as `--sort=-requests`: argparse would take a value that starts with
    '-' for an option of its own, and `-field` (reversed) is how the README spells it."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] == "--sort" and arg[:1] == "-" and arg[1:2].isalpha():
            joined[-1] = f"--sort={arg}"
        else:
            joined.append(arg)
    return joined


def _report_config_error(args: argparse.Namespace, exc: ConfigError) -> None:
    """One line naming the variable. The daemon's goes to the journal as JSON, like the rest
    of its lines, when its logs would be JSON (FETCHER_LOG_FORMAT=json, or auto off a
    terminal); read from the environment itself, since the settings are what failed."""
    fmt = os.environ.get("FETCHER_LOG_FORMAT", "auto").strip().lower()
    if args.command is cmd_run and (
        fmt == "json" or (fmt != "console" and not sys.stderr.isatty())
    ):
        line = {
            "event": "service.config_invalid",
            "level": "error",
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "error": str(exc),
            "exit_code": EXIT_CONFIG,
        }
        print(json.dumps(line), file=sys.stderr)
    else:
        print(f"fetcher: configuration error: {exc}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetcher", description="A rate-limited async HTTP fetcher service."
    )
    parser.add_argument("--version", action="version", version=f"fetcher {__version__}")
    parser.add_argument("--env-file", type=Path, help="read FETCHER_* variables from this file")
    parser.add_argument(
        "--db", type=location_of, help="the database: a path or a URL (overrides FETCHER_DB)"
    )
    parser.set_defaults(read_only=False)
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_queue_commands(sub)
    _add_read_commands(sub)
    _add_other_commands(sub)
    return parser


def _add_queue_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The daemon, and what puts work in its queue."""
    run = sub.add_parser("run", help="the daemon, in the foreground")
    run.add_argument(
        "--drain", action="store_true", help="exit 0 once nothing is queued, retrying or running"
    )
    run.set_defaults(command=cmd_run)

    submit = sub.add_parser("submit", help="queue URLs")
    submit.add_argument("urls", nargs="*", metavar="URL")
    submit.add_argument("-f", "--file", help="read URLs from FILE, one a line ('-' = stdin)")
    submit.set_defaults(command=cmd_submit)


def _add_read_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands that only read the database (they need no other setting)."""
    st = sub.add_parser("stats", help="per-host counters")
    fmt = st.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array of objects")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")
    st.add_argument("--host", help="only hosts matching this glob (example: '*.example.com')")
    st.add_argument("--sort", default="requests", help="field to sort by; '-field' reverses")
    st.add_argument("--watch", action="store_true", help="refresh in place every 2 s")
    st.add_argument("--since", help="with --by minute: how far back (30m, 1h, 2d)")
    st.add_argument("--by", choices=["minute"], help="per-minute series instead of totals")
    st.set_defaults(command=cmd_stats, read_only=True)

    status = sub.add_parser("status", help="the queue by state and current throughput")
    status.add_argument("--json", action="store_true")
    status.set_defaults(command=cmd_status, read_only=True)

    res = sub.add_parser("results", help="finished jobs, one JSON object a line")
    res.add_argument("--state", choices=["done", "failed"])
    res.add_argument("--host", help="host glob")
    res.add_argument("--since", help="finished within this long (30m, 1h, 2d)")
    res.add_argument("--limit", type=int)
    res.set_defaults(command=cmd_results, read_only=True)

    robots = sub.add_parser("robots", help="a site's cached robots.txt, and what it allows")
    robots.add_argument("target", metavar="HOST|URL", help="a host key, or a URL to check")
    robots.add_argument("--json", action="store_true")
    robots.set_defaults(command=cmd_robots, read_only=True)


def _add_other_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="the effective configuration and its sources")
    config.add_argument("--json", action="store_true")
    config.set_defaults(command=cmd_config)

    demo = sub.add_parser("demo", help="a self-contained demonstration on loopback")
    demo.add_argument(
        "--hosts", type=int, help="origin hosts (127.0.0.2 …): 4, or 6 with --postgres"
    )
    demo.add_argument("--urls", type=int, default=40, help="URLs per host")
    demo.add_argument(
        "--postgres", metavar="URL", help="the queue in this PostgreSQL database (best empty)"
    )
    demo.add_argument(
        "--daemons", type=int, help="daemons draining the queue together (3 with --postgres)"
    )
    demo.set_defaults(command=cmd_demo)


# -- run ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from fetcher.daemon import run_daemon

    return run_daemon(settings, drain=args.drain, progress=args.drain and sys.stderr.isatty())


# -- submit ---------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    if not args.urls and not args.file:
        print("fetcher submit: give URLs or -f FILE", file=sys.stderr)
        return EXIT_USAGE
    lines: Iterable[str | bytes] = args.urls
    if args.file:
        # bytes: a line that is not UTF-8 is rejected by itself, the rest still queued
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        lines = itertools.chain(args.urls, _lines_of(stream))
    return asyncio.run(_submit(settings, lines))


def _lines_of(stream: IO[bytes]) -> Iterator[bytes]:
    with stream:
        yield from stream


async def _submit(settings: Settings, lines: Iterable[str | bytes]) -> int:
    from fetcher.backends import open_queue
    from fetcher.submission import submit_lines

    def reject(shown: str, reason: str) -> None:
        print(f"rejected: {shown}: {reason}", file=sys.stderr)

    # a 32 MiB page cache: the url index of a big queue
    queue = await open_queue(
        settings.db_location, cache_mib=32, busy_timeout_s=settings.db_busy_timeout
    )
    try:
        report = await submit_lines(queue, lines, reject)
    finally:
        await queue.close()
    print(
        f"queued {report.queued}, already queued {report.duplicates}, rejected {report.rejected}",
        file=sys.stderr,
    )
    return EXIT_FAILURE if report.rejected else EXIT_OK


# -- read side ------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _reader(path: Location) -> QueueReader:
    from fetcher.backends import open_reader

    return open_reader(path)


def cmd_stats(args: argparse.Namespace, path: Location) -> int:
    db = _reader(path)
    if args.by == "minute" or args.since:
        since = time.time() - _duration(args.since or "1h")
        series = stats.minute_series(db, since=since, host=args.host)
        if args.json:
            print(json.dumps(series))
        elif args.csv:
            sys.stdout.write(stats.render_csv(series, list(series[0]) if series else ["host"]))
        else:
            stats.render_series(series, since, time.time(), _console())
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
        _watch(db, args, _console())
    else:
        stats.render_table(rows, _console())
    return EXIT_OK


def _watch(db: QueueReader, args: argparse.Namespace, console: Console) -> None:
    """The table, refreshed in place every 2 s until Ctrl-C."""
    from rich.live import Live

    def frame() -> Table:
        return stats.host_table(stats.host_stats(db, host=args.host, sort=args.sort))

    with Live(frame(), console=console, auto_refresh=False) as live:
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
    verdicts = _reader(path).robots(origins)
    rows = []
    for v in verdicts:
        row: dict[str, Any] = {
            "origin": v.origin,
            "fetched_at": _iso(v.fetched_at),
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


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat().replace("+00:00", "Z")


def cmd_status(args: argparse.Namespace, path: Location) -> int:
    db = _reader(path)
    summary = stats.status(db)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>16}  {'-' if value is None else value}")
    return EXIT_OK


def cmd_results(args: argparse.Namespace, path: Location) -> int:
    db = _reader(path)
    since = time.time() - _duration(args.since) if args.since else None
    out = sys.stdout
    for row in stats.results(db, state=args.state, host=args.host, since=since, limit=args.limit):
        out.write(json.dumps(row) + "\n")
    return EXIT_OK


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    from fetcher.backends import schema_version
    from fetcher.config import describe, load_hosts_file

    version = schema_version(settings.db_location)

    rows = describe(settings, args.env_file)
    if settings.hosts_file is not None:
        load_hosts_file(settings.hosts_file, settings.default_limits)  # validate it too
    if args.json:
        data: dict[str, Any] = {name: {"value": _jsonable(v), "source": s} for name, v, s in rows}
        data["schema_version"] = version
        print(json.dumps(data, indent=2))
    else:
        for name, value, source in rows:
            print(f"{name}={'' if value is None else value}  # {source}")
        print(f"# schema version {version}")
    return EXIT_OK


def _jsonable(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise SystemExit(f"fetcher: not a duration: {text!r} (examples: 90s, 30m, 1h, 2d)")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


# -- demo -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from fetcher.demo import run_demo

    daemons = args.daemons or (3 if args.postgres else 1)
    if args.postgres and not is_postgres_url(args.postgres):
        print(f"fetcher demo: --postgres wants a postgresql:// URL (got {args.postgres!r})")
        return EXIT_USAGE
    if daemons > 1 and not args.postgres:
        print("fetcher demo: several daemons share a queue on PostgreSQL only (--postgres URL)")
        return EXIT_USAGE
    hosts = args.hosts or (6 if args.postgres else 4)  # two a daemon, for three daemons
    return run_demo(hosts=hosts, urls_per_host=args.urls, postgres=args.postgres, daemons=daemons)
