"""The daemon as systemd runs it: sd_notify, SIGTERM drain, SIGKILL recovery, exit 78."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fetcher.demo import Origin

from .conftest import Fetcher, assert_counters_match, wait_until

pytestmark = pytest.mark.integration


def _json(line: str) -> dict[str, object]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _messages(sock: socket.socket, until: float) -> list[str]:
    out = []
    sock.settimeout(0.1)
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_notify_ready_watchdog_status_and_stopping(
    fetcher: Fetcher, origin: Origin, tmp_path: Path
) -> None:
    """With NOTIFY_SOCKET and WATCHDOG_USEC set: READY=1, a STATUS= line, WATCHDOG=1 about
    every half WATCHDOG_USEC, and STOPPING=1 after SIGTERM; exit 0."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        env = {**fetcher.env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
        daemon = fetcher.start(env=env)
        first = _messages(sock, time.monotonic() + 2.0)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        last = _messages(sock, time.monotonic() + 0.5)
    ready = [m for m in first if "READY=1" in m]
    assert ready and "STATUS=in flight 0, queued 0" in ready[0]
    assert 5 <= sum("WATCHDOG=1" in m for m in first) <= 15  # ~every 0.2 s for ~2 s
    assert any("STOPPING=1" in m for m in last)


def test_sigterm_during_load_exits_0_within_grace_and_leaves_nothing_running(
    fetcher: Fetcher, origin: Origin
) -> None:
    """SIGTERM: claiming stops, in-flight requests get the grace, the rest goes back to
    `queued`, exit 0, no job left `running`."""
    fetcher.set(max_concurrency=8, host_concurrency=8, shutdown_grace=1)
    fetcher.submit([origin.url(f"slow/{300 if n % 2 else 5000}/{n}", n % 4) for n in range(80)])
    daemon = fetcher.start()
    assert wait_until(lambda: origin.stats.total_in_flight >= 8, timeout=10)
    sent = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert time.monotonic() - sent < 1 + 2.0  # the grace, plus commit and exit
    status = fetcher.status()
    assert status["running"] == 0
    assert status["queued"] + status["done"] == 80
    stopped = [e for e in fetcher.log_of() if e["event"] == "service.stopped"]
    # every job it held went back; on PostgreSQL, where hosts are acquired turn by turn, some
    # jobs may never have been claimed
    if fetcher.backend == "sqlite":
        assert stopped and stopped[0]["requeued"] == status["queued"]
    else:
        assert stopped and 0 < stopped[0]["requeued"] <= status["queued"]
    fetcher.drain()  # what was put back is fetched by the next run
    assert fetcher.status()["done"] == 80


def test_sigterm_in_the_middle_of_a_redirect_chain_keeps_the_counters_exact(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A job stopped between two hops goes back to the queue and starts again from its first
    URL; the hop the host already answered is still counted, so after the next run the
    counters equal what the origin received."""
    fetcher.set(host_rate=1, host_burst=1)  # the second hop waits a second for its host
    fetcher.submit([origin.url("redirect/2/x")])
    daemon = fetcher.start()
    assert wait_until(lambda: origin.stats.requests[origin.host()] >= 1, timeout=10)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(15) == 0
    assert origin.stats.requests[origin.host()] == 1  # stopped while the second hop waited
    assert fetcher.stats()[origin.host()]["requests"] == 1
    assert fetcher.status()["queued"] == 1
    fetcher.drain()
    assert origin.stats.requests[origin.host()] == 1 + 3
    assert_counters_match(fetcher, origin)


def test_sigkill_then_restart_refetches_only_what_was_not_committed(
    fetcher: Fetcher, origin: Origin
) -> None:
    """After SIGKILL a restarted daemon reclaims the dead one's jobs at once and every job ends
    done. What was committed before the kill is never fetched again; what was not (in flight,
    or finished inside the open commit window) is fetched once more, never twice."""
    fetcher.set(max_concurrency=6, host_concurrency=6)
    urls = [origin.url(f"slow/200/{n}", n % 3) for n in range(60)]
    fetcher.submit(urls)
    daemon = fetcher.start()
    assert wait_until(lambda: sum(origin.stats.requests.values()) >= 15, timeout=15)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    committed = {urlsplit(r["url"]).path for r in fetcher.results()}
    seen_before = sum(origin.stats.requests.values())
    assert 0 < len(committed) < seen_before  # killed mid-run, with requests unrecorded

    # well within the 60 s lease: only the dead daemon's pid, not its lease, can free its jobs
    result = fetcher.drain(timeout=30)
    events = [_json(line) for line in result.stderr.splitlines()]
    started = [e for e in events if e.get("event") == "service.started"]
    reclaimed = started[0]["reclaimed"] if started else None
    assert isinstance(reclaimed, int) and reclaimed > 0
    status = fetcher.status()
    assert status["done"] == 60 and status["running"] == 0
    fetched = Counter[str]()
    for (_host, path), n in origin.stats.paths.items():
        fetched[path] += n
    assert len(fetched) == 60 and max(fetched.values()) <= 2
    refetched = {path for path, n in fetched.items() if n == 2}
    assert not refetched & committed
    assert len(refetched) <= seen_before - len(committed)


@pytest.mark.sqlite_only  # on PostgreSQL a lease must outlast 2 x FETCHER_TIMEOUT (test_config)
def test_a_request_longer_than_the_lease_keeps_its_job(fetcher: Fetcher, origin: Origin) -> None:
    """A request that takes longer than FETCHER_LEASE_S: its daemon renews the lease, so a
    second daemon on the same database never takes the job back and fetches it again."""
    fetcher.set(lease_s=5, timeout=30)
    fetcher.submit([origin.url("slow/9000/long")])
    first = fetcher.start()
    assert wait_until(lambda: origin.stats.total_in_flight == 1, timeout=10)
    second = fetcher.start("--drain")  # heartbeats every 1.25 s, taking back expired leases
    assert second.wait(40) == 0  # it ends once the first daemon has recorded the job
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert origin.stats.paths[(origin.host(), "/slow/9000/long")] == 1
    assert fetcher.status()["done"] == 1
    assert "jobs.reclaimed" not in [e["event"] for e in fetcher.log_of(1)]


def test_wrong_variable_exits_78_naming_it(fetcher: Fetcher) -> None:
    """A wrong value: exit 78 (systemd does not restart on it), the variable named, no traceback;
    with JSON logs, as one JSON line like the daemon's others (the journal stays parseable)."""
    fetcher.set(max_concurrency="lots")
    result = fetcher.cli("run")
    assert result.returncode == 78
    line = json.loads(result.stderr)
    assert line["event"] == "service.config_invalid" and line["exit_code"] == 78
    assert "FETCHER_MAX_CONCURRENCY" in line["error"] and "Traceback" not in result.stderr
    fetcher.set(log_format="console")
    assert fetcher.cli("run").stderr.startswith("fetcher: configuration error: FETCHER_MAX_")


def test_bad_hosts_file_at_start_exits_78_naming_file_and_key(fetcher: Fetcher) -> None:
    """A wrong hosts file is a configuration error: exit 78, the file and the key named."""
    hosts = fetcher.workdir / "hosts.toml"
    hosts.write_text('[hosts."a.example"]\nconcurrency = 0\n')
    fetcher.set(hosts_file=hosts)
    result = fetcher.cli("run")
    assert result.returncode == 78
    assert "hosts.toml" in result.stderr and "a.example" in result.stderr
    assert "concurrency" in result.stderr


def test_two_daemons_never_fetch_the_same_job(fetcher: Fetcher, origin: Origin) -> None:
    """Two daemons on one database: every job is fetched once."""
    fetcher.set(max_concurrency=4, host_concurrency=4)
    fetcher.submit([origin.url(f"slow/20/{n}", n % 4) for n in range(120)])
    first, second = fetcher.start("--drain"), fetcher.start("--drain")
    assert first.wait(60) == 0 and second.wait(60) == 0
    assert sum(origin.stats.requests.values()) == 120
    assert fetcher.status()["done"] == 120
