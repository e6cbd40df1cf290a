"""The stats database as a product: formats agree, filters and sorting, the minute series,
retention while fetching, the metrics endpoint, reads while the daemon writes."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fetcher.demo import Origin

from .conftest import Fetcher, wait_until

pytestmark = pytest.mark.integration


def _run_mix(fetcher: Fetcher, origin: Origin) -> None:
    fetcher.set(max_attempts=2)
    kinds = ["ok", "status/404", "status/500", "redirect/1", "reset", "large/200000"]
    fetcher.submit([origin.url(f"{kinds[n % 6]}/{n}", n % 3) for n in range(36)])
    fetcher.drain()


def test_table_json_and_csv_agree_and_filters_sort(fetcher: Fetcher, origin: Origin) -> None:
    """The three formats show the same numbers; --host globs and --sort order them."""
    _run_mix(fetcher, origin)
    rows = list(fetcher.stats().values())
    as_csv = list(csv.DictReader(io.StringIO(fetcher.cli("stats", "--csv").stdout)))
    assert [r["host"] for r in as_csv] == [r["host"] for r in rows]
    for j, c in zip(rows, as_csv, strict=True):
        for key in ("requests", "status_2xx", "status_5xx", "errors", "bytes"):
            assert str(j[key]) == c[key]
    table = fetcher.cli("stats").stdout
    for row in rows:
        line = next(line for line in table.splitlines() if line.startswith(row["host"]))
        assert f"{row['requests']:,}" in line.split()
    one = fetcher.cli("stats", "--json", "--host", f"*.{origin.addresses[1].split('.')[-1]}:*")
    assert [r["host"] for r in json.loads(one.stdout)] == [origin.host(1)]
    by_host = fetcher.cli("stats", "--json", "--sort", "host").stdout
    hosts = [r["host"] for r in json.loads(by_host)]
    assert hosts == sorted(hosts)
    bad = fetcher.cli("stats", "--sort", "nonsense")
    assert bad.returncode == 2 and "cannot sort by" in bad.stderr


def test_results_filters_stats_reverse_sort_and_the_db_option(
    fetcher: Fetcher, origin: Origin
) -> None:
    """`results --state/--host/--since/--limit` select what they say; `stats --sort -field`
    reverses the order; `--db PATH` reads that database whatever FETCHER_DB says."""
    _run_mix(fetcher, origin)

    def results(*args: str) -> list[dict[str, object]]:
        out = fetcher.cli("results", *args)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    every = results()
    assert len(every) == 36
    failed = results("--state", "failed")
    assert failed and {r["state"] for r in failed} == {"failed"}
    assert len(failed) == sum(r["state"] == "failed" for r in every)
    one_host = results("--host", origin.host(2))
    assert one_host and {r["host"] for r in one_host} == {origin.host(2)}
    assert len(one_host) == sum(r["host"] == origin.host(2) for r in every)
    assert [r["job_id"] for r in results("--limit", "5")] == [r["job_id"] for r in every[:5]]
    assert len(results("--since", "1h")) == 36

    by_requests = [r["requests"] for r in json.loads(fetcher.cli("stats", "--json").stdout)]
    ascending = fetcher.cli("stats", "--json", "--sort", "-requests").stdout
    assert [r["requests"] for r in json.loads(ascending)] == sorted(by_requests)
    assert by_requests == sorted(by_requests, reverse=True)

    if fetcher.backend == "sqlite":
        moved = str(fetcher.workdir / "elsewhere.db")
        fetcher.db.rename(moved)
        fetcher.set(db=fetcher.workdir / "missing.db")
    else:
        moved = fetcher.env["FETCHER_DB"]
        fetcher.set(db=moved.rsplit("/", 1)[0] + "/fetcher_no_such_database")
    assert fetcher.cli("status", "--json").returncode == 1  # FETCHER_DB names no database
    via_option = fetcher.cli("--db", moved, "status", "--json")
    assert via_option.returncode == 0 and json.loads(via_option.stdout)["done"] > 0


def test_minute_series_sums_to_the_counters(fetcher: Fetcher, origin: Origin) -> None:
    """Per host, the per-minute rows add up to the cumulative counters."""
    _run_mix(fetcher, origin)
    rows = fetcher.stats()
    series = json.loads(fetcher.cli("stats", "--since", "1h", "--json").stdout)
    for host, row in rows.items():
        minutes = [m for m in series if m["host"] == host]
        for key in ("requests", "status_2xx", "status_3xx", "status_4xx", "status_5xx", "errors",
                    "bytes"):  # fmt: skip
            assert sum(m[key] for m in minutes) == row[key], (host, key)
    chart = fetcher.cli("stats", "--since", "1h", "--by", "minute").stdout
    assert origin.host(0) in chart


def test_retention_prunes_old_rows_while_fetching(fetcher: Fetcher, origin: Origin) -> None:
    """Old results, jobs, minute rows and unreferenced bodies go; new ones and the cumulative
    counters stay; the daemon fetches meanwhile."""
    fetcher.submit([origin.url(f"ok/old-{n}") for n in range(5)])
    fetcher.drain()
    before = fetcher.stats()[origin.host()]["requests"]
    fetcher.sql(
        "UPDATE results SET finished_at = finished_at - 40 * 86400",
        "UPDATE host_minutes SET minute = minute - 40 * 1440",
    )
    fetcher.set(retention_days=30)
    fetcher.submit([origin.url(f"slow/100/new-{n}") for n in range(10)])
    fetcher.drain()
    results = fetcher.results()
    assert sorted(r["url"].rsplit("/", 1)[1] for r in results) == [f"new-{n}" for n in range(10)]
    assert fetcher.stats()[origin.host()]["requests"] == before + 10
    assert fetcher.sql("SELECT count(*) FROM jobs") == [(10,)]
    [(oldest,)] = fetcher.sql("SELECT min(minute) FROM host_minutes")
    assert oldest > time.time() // 60 - 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, str | None, str | None], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return {
        (s.name, s.labels.get("host", s.labels.get("state")), s.labels.get("class")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_agrees_with_the_stats_view(fetcher: Fetcher, origin: Origin) -> None:
    """The Prometheus counters equal host_stats once the daemon has committed its batches;
    the CLI reads the database while the daemon writes it."""
    port = _free_port()
    fetcher.set(metrics_addr=f"127.0.0.1:{port}", max_attempts=2)
    kinds = ["ok", "status/404", "status/503", "reset", "slow/50"]
    fetcher.submit([origin.url(f"{kinds[n % 5]}/{n}", n % 2) for n in range(40)])
    daemon = fetcher.start()
    assert wait_until(lambda: fetcher.status()["done"] + fetcher.status()["failed"] == 40, 30)
    stats = fetcher.stats()
    samples = _scrape(port)
    for host, row in stats.items():
        assert samples[("fetcher_requests_total", host, None)] == row["requests"]
        assert samples.get(("fetcher_errors_total", host, None), 0) == row["errors"]
        assert samples[("fetcher_response_bytes_total", host, None)] == row["bytes"]
        for cls in ("2xx", "4xx", "5xx"):
            value = samples.get(("fetcher_responses_total", host, cls), 0)
            assert value == row[f"status_{cls}"], (host, cls)
    assert samples[("fetcher_in_flight", None, None)] == 0
    _assert_durations_match(port, stats)
    done = fetcher.status()["done"]
    assert wait_until(lambda: _scrape(port).get(("fetcher_queue_jobs", "done", None)) == done, 5)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0


def _assert_durations_match(port: int, stats: dict[str, dict[str, Any]]) -> None:
    """The duration histogram holds one observation per response, its sum is the latencies'
    sum, its buckets are cumulative and at least 50 ms past the slow requests' 50 ms."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    name = "fetcher_request_duration_seconds"
    buckets: dict[str, list[tuple[float, float]]] = {}
    totals: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            host = sample.labels.get("host", "")
            if sample.name == f"{name}_bucket":
                buckets.setdefault(host, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name in (f"{name}_count", f"{name}_sum"):
                totals[(sample.name, host)] = sample.value
    for host, row in stats.items():
        answered = row["requests"] - row["errors"]
        assert totals[(f"{name}_count", host)] == answered
        latency_sum_ms = totals[(f"{name}_sum", host)] * 1000
        assert latency_sum_ms == pytest.approx(
            row["latency_avg_ms"] * answered, abs=0.05 * answered + 0.01
        )
        counts = [n for _, n in sorted(buckets[host])]
        assert counts == sorted(counts) and counts[-1] == answered  # +Inf holds them all
        under_50ms = dict(buckets[host])[0.05]
        assert under_50ms <= answered - 4  # 4 slow/50 requests per host


def test_metrics_on_a_non_loopback_address_are_served_and_logged_as_exposed(
    fetcher: Fetcher,
) -> None:
    """FETCHER_METRICS_ADDR on every interface: served, and one `metrics.exposed` warning
    tells the operator; a loopback address gets none."""
    for addr, exposed in ((f"0.0.0.0:{_free_port()}", True), (f"127.0.0.1:{_free_port()}", False)):
        fetcher.set(metrics_addr=addr)
        proc = fetcher.start()
        port = int(addr.rsplit(":")[1])
        try:
            assert wait_until(functools.partial(_reachable, port), 15), addr
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        warnings = [e for e in fetcher.last_log() if e["event"] == "metrics.exposed"]
        assert len(warnings) == int(exposed), (addr, warnings)
        if exposed:
            assert warnings[0]["addr"] == addr and warnings[0]["level"] == "warning"


def _reachable(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    except httpx.HTTPError:
        return False


class Terminal:
    """A command run on a pseudo-terminal (as an operator's shell runs it), its output read
    as it comes; stopped by its pid at the end."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        main, sub = pty.openpty()
        self._main = main
        self.proc = subprocess.Popen(
            args, stdin=sub, stdout=sub, stderr=sub,
            env={**env, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"},
        )  # fmt: skip
        os.close(sub)
        self.output = ""

    def read(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self._main], [], [], min(left, 0.1))[0]:
                try:
                    self.output += os.read(self._main, 65536).decode(errors="replace")
                except OSError:  # the command ended
                    break
        return self.output

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._main)


def test_stats_watch_refreshes_in_place_until_ctrl_c(fetcher: Fetcher, origin: Origin) -> None:
    """`stats --watch` on a terminal shows the table, shows the next numbers once the daemon
    has recorded them (within its 2 s refresh), and ends on Ctrl-C with 130 and no
    traceback."""
    fetcher.submit([origin.url(f"ok/{n}") for n in range(7)])
    watch = Terminal([sys.executable, "-m", "fetcher", "stats", "--watch"], fetcher.env)
    try:
        assert "last request, UTC" in watch.read(1.5)
        assert origin.host() not in watch.output  # nothing fetched yet
        fetcher.drain()
        assert wait_until(lambda: origin.host() in watch.read(0.2), 10), watch.output
        row = next(line for line in watch.output.splitlines() if origin.host() in line)
        assert row.split()[1:4] == ["7", "100.0%", "7"], row  # requests, ok %, 2xx
        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(10) == 130
        assert "Traceback" not in watch.read(0.3)
    finally:
        watch.close()
