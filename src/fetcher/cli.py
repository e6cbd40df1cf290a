"""The `fetcher` command: one function per subcommand; exit 0 ok, 1 failure, 2 usage, 78 config."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetcher import __version__
from fetcher.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from fetcher.commands.read import (
    cmd_body,
    cmd_results,
    cmd_robots,
    cmd_stats,
    cmd_status,
    cmd_warc,
    cmd_webhooks,
)
from fetcher.commands.write import cmd_cancel, cmd_retry, cmd_submit
from fetcher.errors import ConfigError, SchemaTooOld, StoreUnavailable
from fetcher.locations import database_location, is_postgres_url, location_of

if TYPE_CHECKING:
    from fetcher.config import Settings

__all__ = ["main"]


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
    except (FileNotFoundError, SchemaTooOld) as exc:
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

    submit = sub.add_parser("submit", help="queue URLs and jobs; prints their ids")
    submit.add_argument("urls", nargs="*", metavar="URL")
    submit.add_argument(
        "-f", "--file", help="read FILE ('-' = stdin): a URL or a JSON job object a line"
    )
    submit.add_argument("--method", default="GET", help="the method of every line that gives none")
    submit.add_argument(
        "--header", action="append", metavar="'NAME: VALUE'", help="a header of every line (repeat)"
    )
    submit.add_argument("--priority", type=int, default=0, help="-1000 … 1000; higher goes first")
    submit.add_argument("--metadata", metavar="JSON", help="a JSON object kept with every job")
    submit.add_argument("--every", metavar="DURATION", help="every line recurs: 90, 30m, 6h, 1d")
    submit.add_argument(
        "--json", action="store_true", help="one JSON object a line: line, id, duplicate (or error)"
    )
    submit.set_defaults(command=cmd_submit)

    cancel = sub.add_parser("cancel", help="cancel jobs by id")
    cancel.add_argument("ids", nargs="+", type=int, metavar="ID")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(command=cmd_cancel)

    retry = sub.add_parser("retry", help="queue finished jobs again as new runs (re-drive)")
    retry.add_argument("--state", required=True, choices=["failed", "cancelled", "done"])
    retry.add_argument("--host", metavar="GLOB", help="only hosts matching GLOB (*, ?)")
    retry.add_argument("--since", metavar="DURATION", help="only runs finished within, e.g. 1h")
    retry.add_argument("--error", metavar="TEXT", help="only runs whose error contains TEXT")
    retry.add_argument("--dry-run", action="store_true", help="count them, queue nothing")
    retry.add_argument("--json", action="store_true")
    retry.set_defaults(command=cmd_retry)


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
    res.add_argument("--state", choices=["done", "failed", "cancelled"])
    res.add_argument("--id", type=int, dest="job_id", help="the result of this job only")
    res.add_argument("--host", help="host glob")
    res.add_argument("--since", help="finished within this long (30m, 1h, 2d)")
    res.add_argument("--limit", type=int)
    res.set_defaults(command=cmd_results, read_only=True)

    hooks = sub.add_parser("webhooks", help="webhook deliveries pending or given up")
    hooks.add_argument("--state", choices=["pending", "failed", "delivered"])
    hooks.add_argument("--limit", type=int, default=1000)
    hooks.add_argument("--json", action="store_true", help="one JSON object a line")
    hooks.set_defaults(command=cmd_webhooks, read_only=True)

    robots = sub.add_parser("robots", help="a site's cached robots.txt, and what it allows")
    robots.add_argument("target", metavar="HOST|URL", help="a host key, or a URL to check")
    robots.add_argument("--json", action="store_true")
    robots.set_defaults(command=cmd_robots, read_only=True)


def _add_other_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    body = sub.add_parser("body", help="the kept body of a job's latest result, to stdout")
    body.add_argument("id", type=int, metavar="ID")
    body.set_defaults(command=cmd_body, read_only=True)
    warc = sub.add_parser("warc", help="the WARC files kept bodies are in, and their records")
    warc.add_argument("--json", action="store_true")
    warc.set_defaults(command=cmd_warc, read_only=True)
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
