"""The read side: host stats, queue status, results and the per-minute series over a
`QueueReader`, and how they are shown (table, JSON, CSV, sparklines).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported where a table is drawn: --json and --csv need none of it
    from rich.console import Console
    from rich.table import Table

    from fetcher.jobqueue import HostStatsRow, MinuteRow, QueueReader, ResultRow

__all__ = [
    "STAT_FIELDS",
    "host_stats",
    "minute_series",
    "render_csv",
    "render_series",
    "render_table",
    "results",
    "status",
]

STAT_FIELDS = (
    "host", "requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "errors",
    "bytes", "latency_avg_ms", "latency_max_ms", "last_status", "last_request_at",
    "robots_disallowed",
)  # fmt: skip
STATES = ("queued", "retrying", "running", "done", "failed", "cancelled")
_SPARKS = "▁▂▃▄▅▆▇█"


def host_stats(
    reader: QueueReader, *, host: str | None = None, sort: str = "requests"
) -> list[HostStatsRow]:
    """Rows of `host_stats`, filtered by a host glob, sorted by `sort` (descending for numbers;
    a leading '-' reverses)."""
    descending = not sort.startswith("-")
    field = sort.removeprefix("-")
    if field not in STAT_FIELDS:
        raise ValueError(f"cannot sort by {field!r}; one of: {', '.join(STAT_FIELDS)}")
    rows = reader.host_stats()
    if host:
        rows = [row for row in rows if fnmatch.fnmatchcase(row["host"], host.lower())]
    if field == "host":
        descending = not descending

    def key(row: HostStatsRow) -> tuple[bool, Any]:
        value = row[field]  # type: ignore[literal-required]  # checked against STAT_FIELDS
        return value is not None, value or 0

    rows.sort(key=key, reverse=descending)
    return rows


def status(reader: QueueReader, now: float | None = None) -> dict[str, Any]:
    """The queue by state, requests per second over the last minute, the oldest queued age."""
    now = time.time() if now is None else now
    counts = reader.queue_counts()
    result: dict[str, Any] = {state: counts.get(state, 0) for state in STATES}
    minute = int(now // 60)
    per_minute = reader.requests_by_minute(minute - 1)
    elapsed_in_minute = now - minute * 60
    # the last 60 s: this minute so far plus the matching share of the previous one
    last_60s = per_minute.get(minute, 0) + per_minute.get(minute - 1, 0) * (
        1 - elapsed_in_minute / 60
    )
    result["requests_per_s"] = round(last_60s / 60, 2)
    oldest = reader.oldest_queued_at()
    result["oldest_queued_s"] = None if oldest is None else round(now - oldest, 1)
    result["recurring"], next_run = reader.recurring()
    result["next_run_in_s"] = None if next_run is None else round(max(next_run - now, 0.0), 1)
    return result


def results(
    reader: QueueReader,
    *,
    state: str | None = None,
    host: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    job_id: int | None = None,
) -> Iterator[ResultRow]:
    count = 0
    for row in reader.results(state, since, job_id):
        if host and not fnmatch.fnmatchcase(row["host"], host.lower()):
            continue
        yield row
        count += 1
        if limit is not None and count >= limit:
            return


def minute_series(reader: QueueReader, *, since: float, host: str | None = None) -> list[MinuteRow]:
    """Per-host, per-minute rows since `since` (unix time), oldest first."""
    out = reader.minute_rows(int(since // 60))
    if host:
        out = [row for row in out if fnmatch.fnmatchcase(row["host"], host.lower())]
    return out


# -- presentation -------------------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def success_percent(row: Mapping[str, Any]) -> str:
    if not row["requests"]:
        return "-"
    return f"{100 * row['status_2xx'] / row['requests']:.1f}%"


def render_table(rows: Sequence[Mapping[str, Any]], console: Console) -> None:
    console.print(host_table(rows))


def host_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The stats table, for `stats` and each frame of `stats --watch`."""
    from rich.table import Table

    table = Table(show_lines=False, header_style="bold", box=None, pad_edge=False)
    for name, justify in (
        ("host", "left"), ("requests", "right"), ("ok %", "right"), ("2xx", "right"),
        ("3xx", "right"), ("4xx", "right"), ("5xx", "right"), ("errors", "right"),
        ("bytes", "right"), ("avg", "right"), ("max", "right"), ("last", "right"),
        ("last request, UTC", "left"), ("robots ✗", "right"),
    ):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row["host"],
            f"{row['requests']:,}",
            success_percent(row),
            f"{row['status_2xx']:,}",
            f"{row['status_3xx']:,}",
            f"{row['status_4xx']:,}",
            f"{row['status_5xx']:,}",
            f"{row['errors']:,}",
            human_bytes(row["bytes"]),
            human_ms(row["latency_avg_ms"]),
            human_ms(row["latency_max_ms"]),
            "-" if row["last_status"] is None else str(row["last_status"]),
            (row["last_request_at"] or "-").replace("T", " ").removesuffix("Z")[:19],
            f"{row['robots_disallowed']:,}",
        )
    return table


def render_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def sparkline(values: Sequence[float]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(int(v / top * (len(_SPARKS) - 1) + 0.5), 7)] for v in values)


def render_series(
    rows: Sequence[Mapping[str, Any]], since: float, now: float, console: Console
) -> None:
    """One line per host: requests, errors and average latency per minute as sparklines."""
    from rich.table import Table

    first, last = int(since // 60), int(now // 60)
    by_host: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        by_host.setdefault(row["host"], {})[int(row["at"]) // 60] = row
    table = Table(header_style="bold")
    for name in ("host", "requests/min", "errors/min", "avg latency", "total", "errors"):
        table.add_column(name)
    for host, minutes in sorted(by_host.items()):
        span = [minutes.get(m) for m in range(first, last + 1)]
        requests = [r["requests"] if r else 0 for r in span]
        errors = [r["errors"] if r else 0 for r in span]
        latency = [(r["latency_avg_ms"] or 0) if r else 0 for r in span]
        table.add_row(
            host,
            sparkline(requests),
            sparkline(errors),
            sparkline(latency),
            f"{sum(requests):,}",
            f"{sum(errors):,}",
        )
    console.print(table)
