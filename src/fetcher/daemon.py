"""Putting the daemon together: settings → queue, guard, transport, limits → `Service.run`.

Every resource is released by the exit stack, in reverse order, each whatever the others did."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import platform
import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fetcher import __version__
from fetcher.bodies import BodyStore
from fetcher.config import HostLimits, Settings, load_hosts_file
from fetcher.errors import StoreUnavailable
from fetcher.fetch import Fetcher, build_transport
from fetcher.guard import Guard
from fetcher.jobqueue import JobQueue, open_queue
from fetcher.locations import masked
from fetcher.log import configure_logging, get_logger
from fetcher.service import Service
from fetcher.systemd import Notifier

if TYPE_CHECKING:
    from fetcher.metrics import Metrics

__all__ = ["run_daemon"]

_log = get_logger("fetcher.daemon")


def run_daemon(settings: Settings, *, drain: bool, progress: bool) -> int:
    """`fetcher run`: exit 0 after a clean stop (or a finished drain), 1 on a failure."""
    configure_logging(settings.log_format, settings.log_level)
    _raise_open_files_limit()
    overrides = (
        load_hosts_file(settings.hosts_file, settings.default_limits) if settings.hosts_file else {}
    )
    _tune_gc()
    try:
        failure = asyncio.run(_run(settings, overrides, drain=drain, progress=progress))
    except (OSError, StoreUnavailable) as exc:
        _log.error("service.failed", error=str(exc))
        return 1
    except Exception as exc:  # a bug: one line with its traceback, and systemd restarts us
        _log.error("service.failed", error=repr(exc), exc_info=exc)
        return 1
    return 0 if failure is None else 1


def _tune_gc() -> None:
    """What start-up made (modules, classes, pydantic's schemas) is frozen out of every
    collection: the collector then scans only what the loop allocates. The thresholds stay at
    Python's defaults: raised, they let cyclic garbage build up (BENCHMARKS.md, "gc")."""
    gc.freeze()


def _raise_open_files_limit() -> None:
    """Idle keep-alive connections to many hosts are many open files: take the hard limit
    (systemd's default soft limit is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _run(
    settings: Settings, overrides: Mapping[str, HostLimits], *, drain: bool, progress: bool
) -> str | None:
    """The daemon's run; what failed (a task crashed), or None."""
    _log.info(
        "service.starting",
        version=__version__,
        python=platform.python_version(),
        db=str(masked(settings.db_location)),
        allow_private=settings.allow_private,
    )
    async with contextlib.AsyncExitStack() as stack:
        queue = await open_queue(
            settings.db_location, busy_timeout_s=settings.db_busy_timeout, lease_s=settings.lease_s
        )
        stack.push_async_callback(queue.close)
        _log.info("store.opened", **queue.about())
        guard = Guard(allow_private=settings.allow_private)
        bodies = BodyStore(settings.bodies_path) if settings.bodies_path else None
        fetcher = Fetcher(settings, build_transport(guard), bodies)
        stack.push_async_callback(fetcher.aclose)
        notifier = Notifier(os.environ)
        stack.callback(notifier.close)
        metrics = _metrics(settings)
        if metrics is not None:
            stack.callback(metrics.close)
        service = Service(
            settings,
            queue,
            fetcher,
            drain=drain,
            overrides=overrides,
            notifier=notifier,
            bodies=bodies,
            metrics=metrics,
        )
        if progress:
            shown = asyncio.create_task(_show_progress(queue))
            stack.callback(shown.cancel)
        await service.run()
        return service.failure


def _metrics(settings: Settings) -> Metrics | None:
    if not settings.metrics_addr:
        return None
    from fetcher.metrics import Metrics  # prometheus_client only when asked for

    metrics = Metrics(settings.metrics_addr)
    _log.info("metrics.serving", addr=settings.metrics_addr, loopback=metrics.loopback)
    if not metrics.loopback:
        _log.warning("metrics.exposed", addr=settings.metrics_addr, why="not a loopback address")
    return metrics


async def _show_progress(queue: JobQueue) -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    columns = (
        TextColumn("fetching"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("jobs", total=None, detail="")
        while True:
            counts = await queue.counts()
            finished = counts["done"] + counts["failed"]
            total = finished + counts["queued"] + counts["retrying"] + counts["running"]
            detail = f"failed {counts['failed']}, retrying {counts['retrying']}"
            bar.update(task, total=total, completed=finished, detail=detail)
            await asyncio.sleep(0.2)
