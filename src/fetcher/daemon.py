"""Putting the daemon together: settings → store, guard, client, limits → `Service.run`.
Also `fetcher demo`, which runs that daemon, as a subprocess, against the loopback origin."""

from __future__ import annotations

import asyncio
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fetcher import __version__
from fetcher.bodies import BodyStore
from fetcher.config import HostLimits, Settings, load_hosts_file
from fetcher.demo import Origin
from fetcher.fetch import Fetcher, build_transport
from fetcher.guard import Guard
from fetcher.log import configure_logging, get_logger
from fetcher.metrics import Metrics
from fetcher.service import Service
from fetcher.store import Store
from fetcher.systemd import Notifier

__all__ = ["run_daemon", "run_demo"]

_log = get_logger("fetcher.daemon")


def run_daemon(settings: Settings, *, drain: bool, progress: bool) -> int:
    """`fetcher run`: exit 0 after a clean stop (or a finished drain), 1 on a failure."""
    configure_logging(settings.log_format, settings.log_level)
    _raise_open_files_limit()
    overrides = (
        load_hosts_file(settings.hosts_file, settings.default_limits) if settings.hosts_file else {}
    )
    try:
        asyncio.run(_run(settings, overrides, drain=drain, progress=progress))
    except OSError as exc:
        _log.error("service.failed", error=str(exc))
        return 1
    return 0


def _raise_open_files_limit() -> None:
    """Idle keep-alive connections to many hosts are many open files: take the hard limit
    (systemd's default soft limit is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _run(
    settings: Settings, overrides: Mapping[str, HostLimits], *, drain: bool, progress: bool
) -> None:
    _log.info(
        "service.starting",
        version=__version__,
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        db=str(settings.db_path),
        allow_private=settings.allow_private,
    )
    if sqlite3.sqlite_version_info < (3, 51, 3):
        _log.info("sqlite.old", sqlite=sqlite3.sqlite_version, note="predates the WAL-reset fix")
    store = await Store.open(settings.db_path)
    guard = Guard(allow_private=settings.allow_private)
    bodies = BodyStore(settings.bodies_path) if settings.bodies_path else None
    fetcher = Fetcher(settings, build_transport(settings, guard), guard, bodies)
    notifier = Notifier(os.environ)
    metrics = Metrics(settings.metrics_addr) if settings.metrics_addr else None
    if metrics is not None:
        _log.info("metrics.serving", addr=settings.metrics_addr, loopback=metrics.loopback)
        if not metrics.loopback:
            _log.warning(
                "metrics.exposed", addr=settings.metrics_addr, why="not a loopback address"
            )
    service = Service(
        settings,
        store,
        fetcher,
        drain=drain,
        overrides=overrides,
        notifier=notifier,
        bodies=bodies,
        metrics=metrics,
    )
    shown = asyncio.create_task(_show_progress(store)) if progress else None
    try:
        await service.run()
    finally:
        if shown is not None:
            shown.cancel()
        await fetcher.aclose()
        await store.close()
        notifier.close()
        if metrics is not None:
            metrics.close()


async def _show_progress(store: Store) -> None:
    console = Console(stderr=True)
    columns = (
        TextColumn("fetching"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("jobs", total=None, detail="")
        while True:
            counts = await store.counts()
            finished = counts["done"] + counts["failed"]
            total = finished + counts["queued"] + counts["retrying"] + counts["running"]
            detail = f"failed {counts['failed']}, retrying {counts['retrying']}"
            bar.update(task, total=total, completed=finished, detail=detail)
            await asyncio.sleep(0.2)


# -- demo ------------------------------------------------------------------------------------


def _demo_urls(origin: Origin, hosts: int, per_host: int) -> list[str]:
    kinds = [
        "ok", "ok", "ok", "ok", "slow/300", "ok", "limited", "ok", "flaky/1", "status/404",
        "large/2000000", "redirect/2", "ok", "status/500", "to", "ok",
    ]  # fmt: skip
    urls = []
    for h in range(hosts):
        for n in range(per_host):
            kind = kinds[n % len(kinds)]
            if kind == "to":
                kind = f"to/{origin.host((h + 1) % hosts)}"
            urls.append(origin.url(f"{kind}/{n}", h))
    return urls


def run_demo(*, hosts: int, urls_per_host: int) -> int:
    """Start the origin on 127.0.0.2…, submit a mix of URLs, run `fetcher run --drain` on
    them, and show the stats table next to what the origin received."""
    console = Console()
    addresses = [f"127.0.0.{i + 2}" for i in range(hosts)]
    workdir = Path(tempfile.mkdtemp(prefix="fetcher-demo-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FETCHER_")},
        "FETCHER_DB": str(workdir / "fetcher.db"),
        "FETCHER_ALLOW_PRIVATE": "true",  # the origin lives on loopback
        "FETCHER_HOST_RATE": "10",
        "FETCHER_HOST_BURST": "4",
        "FETCHER_MAX_ATTEMPTS": "3",
        "FETCHER_BACKOFF_BASE": "0.2",
        "FETCHER_LOG_LEVEL": "warning",
    }
    fetcher = [sys.executable, "-m", "fetcher"]
    with Origin(addresses) as origin:
        console.rule(f"origin on {', '.join(addresses)} port {origin.port}; database {workdir}")
        urls = "\n".join(_demo_urls(origin, hosts, urls_per_host)) + "\n"
        subprocess.run([*fetcher, "submit", "-f", "-"], input=urls, text=True, env=env, check=True)
        started = time.monotonic()
        subprocess.run([*fetcher, "run", "--drain"], env=env, check=True, timeout=600)
        elapsed = time.monotonic() - started
        console.rule(f"drained in {elapsed:.1f} s: fetcher stats")
        subprocess.run([*fetcher, "stats", "--sort", "host"], env=env, check=True)
        subprocess.run([*fetcher, "status"], env=env, check=True)
        received = dict(sorted(origin.stats.requests.items()))
    console.print("requests the origin received, per host:", received)
    console.print(f"query it yourself: sqlite3 {workdir}/fetcher.db 'SELECT * FROM host_stats'")
    return 0
