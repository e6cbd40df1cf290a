"""Putting the daemon together: settings → queue, guard, transport, limits → `Service.run`.

`build_service` wires the parts (each takes what it uses, nothing reaches back up); `_run` opens
the resources, each released by the exit stack in reverse order, whatever the others did."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import platform
import resource
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from fetcher import __version__
from fetcher.backends import open_queue
from fetcher.bodies import BodyStore
from fetcher.clocks import Clocks
from fetcher.config import LEASE_MARGIN_S, HostLimits, Settings, load_hosts_file, product_token
from fetcher.errors import StoreUnavailable
from fetcher.feeder import Feeder
from fetcher.fetch import Fetcher
from fetcher.guard import Guard
from fetcher.guarded import GuardedQueue
from fetcher.handler import JobHandler
from fetcher.housekeeping import Housekeeping
from fetcher.jobqueue import JobQueue
from fetcher.limits import Limits
from fetcher.locations import masked
from fetcher.log import configure_logging, get_logger
from fetcher.recorder import Recorder
from fetcher.robots import RobotsGate
from fetcher.scheduler import Scheduler
from fetcher.service import Parts, Service
from fetcher.supervisor import StoreHealth
from fetcher.systemd import Notifier
from fetcher.transport import build_transport

if TYPE_CHECKING:
    from fetcher.api import ApiServer
    from fetcher.metrics import Metrics
    from fetcher.webhooks import WebhookSender

__all__ = ["build_service", "run_daemon"]

_log = get_logger("fetcher.daemon")


def run_daemon(settings: Settings, *, drain: bool, progress: bool) -> int:
    """`fetcher run`: exit 0 after a clean stop (or a finished drain), 1 on a failure."""
    configure_logging(settings.log_format, settings.log_level)
    _raise_open_files_limit()
    overrides = (
        load_hosts_file(settings.hosts_file, settings.default_limits) if settings.hosts_file else {}
    )
    _tune_gc()
    _keep_freed_memory()
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


def _keep_freed_memory() -> None:
    """glibc gives the top of its heap back to the system once 128 kB lie free there, and
    the next bodies read touch new pages again: a page fault each 4 kB, 16-24 a 100 kB answer.
    Up to `_KEPT_FREE_BYTES` stay in the process instead, and blocks below `_MMAP_BYTES` (the
    256 kB a socket read asks for) come from the heap, not from a mapping of their own
    (BENCHMARKS.md, "freed memory"). Elsewhere than glibc, nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _KEPT_FREE_BYTES)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_KEPT_FREE_BYTES = 16 << 20
_MMAP_BYTES = 1 << 20


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
            settings.db_location,
            busy_timeout_s=settings.db_busy_timeout,
            lease_s=settings.lease_s,
            webhook_url=settings.webhook_url,
        )
        stack.push_async_callback(queue.close)
        _log.info("store.opened", **queue.about())
        guard = Guard(allow_private=settings.allow_private)
        bodies = None
        if settings.bodies_path:
            bodies = BodyStore(
                settings.bodies_path,
                max_bytes=settings.warc_max_bytes,
                max_age_s=settings.warc_age_limit,
                gzip=settings.warc_gzip,
                deadline_s=settings.timeout,
            )
            stack.callback(bodies.close)
        fetcher = Fetcher(settings, build_transport(settings, guard), bodies)
        stack.push_async_callback(fetcher.aclose)
        notifier = Notifier(os.environ)
        stack.callback(notifier.close)
        metrics = _metrics(settings)
        if metrics is not None:
            stack.callback(metrics.close)
        service = build_service(
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


def build_service(
    settings: Settings,
    queue: JobQueue,
    fetcher: Fetcher,
    *,
    drain: bool = False,
    overrides: Mapping[str, HostLimits] | None = None,
    notifier: Notifier | None = None,
    bodies: BodyStore | None = None,
    metrics: Metrics | None = None,
    install_signal_handlers: bool = True,
    clocks: Clocks | None = None,
) -> Service:
    """A daemon on `queue`, fetching through `fetcher`: its limits, robots.txt gate, scheduler,
    feeder, recorder, chores and the handler of each job's turn."""
    clocks = clocks or Clocks()
    notifier = notifier or Notifier({})
    stopping = asyncio.Event()
    guarded = GuardedQueue(queue, StoreHealth(notifier, clock=clocks.monotonic), stopping)
    limits = Limits(settings.max_concurrency, settings.default_limits, overrides or {}, *clocks)
    robots = _robots_gate(settings, limits, clocks)
    scheduler = Scheduler(
        limits, clocks.monotonic, robots=robots, refuse=lambda job: handler.disallowed(job),
        lease_end=queue.lease_end, reach_s=settings.timeout + LEASE_MARGIN_S,
        lost=lambda job: handler.not_held(job),
    )  # fmt: skip
    # max_held: what many slow, polite hosts need to keep every slot busy (64 slots over hosts
    # at 2/s: 640 of them at once), and little memory (BENCHMARKS.md, "polite")
    feeder = Feeder(
        guarded, scheduler, limits, robots=robots, lease_s=settings.lease_s,
        max_held=max(64 * settings.max_concurrency, 4096), clocks=clocks,
    )  # fmt: skip
    webhooks = _webhook_sender(settings, guarded, clocks)
    api: ApiServer | None = None

    def told() -> None:  # results committed: whoever waits for them looks now
        if api is not None:
            api.wake()
        if webhooks is not None:
            webhooks.wake()

    recorder = Recorder(guarded, metrics, told, durable=bodies.durable if bodies else None)
    handler = JobHandler(
        settings, fetcher, limits=limits, robots=robots, scheduler=scheduler, feeder=feeder,
        recorder=recorder, clocks=clocks,
    )  # fmt: skip
    housekeeping = Housekeeping(
        guarded, notifier, lease_s=settings.lease_s, retention_days=settings.retention_days,
        bodies=bodies, metrics=metrics, in_flight=lambda: scheduler.in_flight,
        on_due=feeder.wake, forget_idle=handler.forget_idle, wall=clocks.wall,
    )  # fmt: skip
    if metrics is not None:
        metrics.in_flight.set_function(lambda: scheduler.in_flight)
    if settings.api_addr:
        api = _api_server(settings, queue, guarded.health, submitted=feeder.wake, told=told)
    parts = Parts(
        guarded, limits, scheduler, feeder, recorder, housekeeping, handler, notifier, stopping,
        api, webhooks,
    )  # fmt: skip
    return Service(settings, parts, drain=drain, install_signal_handlers=install_signal_handlers)


def _api_server(
    settings: Settings,
    queue: JobQueue,
    health: StoreHealth,
    *,
    submitted: Callable[[], None],
    told: Callable[[], None],
) -> ApiServer:
    """The API on FETCHER_API_ADDR: writes on the daemon's queue itself (a store that is away
    is a 503 at once, not a wait), reads on connections of their own."""
    from fetcher.api import ApiServer
    from fetcher.api.reads import ReadSide
    from fetcher.api.routes import Api

    assert settings.api_addr is not None
    api = Api(
        queue, ReadSide(settings.db_location), limits=settings.job_limits, health=health,
        bodies=settings.bodies_path, submitted=submitted, told=told,
    )  # fmt: skip
    return ApiServer(
        api, addr=settings.api_addr, token=settings.api_token, max_body=settings.api_max_body
    )


def _webhook_sender(
    settings: Settings, queue: GuardedQueue, clocks: Clocks
) -> WebhookSender | None:
    """With FETCHER_WEBHOOK_SECRET set (jobs may then name webhooks), the outbox's sender, on
    a transport of its own behind the SSRF guard."""
    if settings.webhook_secret is None:
        return None
    from fetcher.webhooks import WebhookSender

    return WebhookSender(
        queue, build_transport(settings, Guard(allow_private=settings.allow_private)),
        secret=settings.webhook_secret, user_agent=settings.user_agent,
        timeout_s=settings.timeout, backoff=(settings.backoff_base, settings.backoff_max),
        retry_for_s=settings.webhook_retry_for, wall=clocks.wall,
    )  # fmt: skip


def _robots_gate(settings: Settings, limits: Limits, clocks: Clocks) -> RobotsGate:
    return RobotsGate(
        token=product_token(settings.user_agent),
        ttl_s=settings.robots_ttl,
        backoff_base=settings.backoff_base,
        backoff_max=settings.backoff_max,
        obeyed=lambda key: limits.limits_for(key).robots,
        clock=clocks.monotonic,
        wall=clocks.wall,
    )


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
