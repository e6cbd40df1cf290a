"""The loopback origin (127.0.0.2 … as distinct hosts) and the real daemon as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from fetcher.demo import Origin
from tests import postgres

ADDRESSES = [f"127.0.0.{i}" for i in range(2, 14)]


@pytest.fixture(scope="session")
def origin_server() -> Iterator[Origin]:
    """One origin for the whole run, on twelve loopback addresses."""
    with Origin(ADDRESSES) as origin:
        yield origin


@pytest.fixture
def origin(origin_server: Origin) -> Origin:
    """The origin with its counts cleared for this test."""
    origin_server.reset_stats()
    return origin_server


class Fetcher:
    """Runs `python -m fetcher` against this test's database, as production runs it: a SQLite
    file in the test's directory, or a PostgreSQL database of the test's own (`url`)."""

    def __init__(self, workdir: Path, url: str | None = None) -> None:
        self.workdir = workdir
        self.backend = "postgres" if url else "sqlite"
        self.db = workdir / "fetcher.db"  # the SQLite file (sqlite_only tests use it)
        self.bodies = workdir / "bodies"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FETCHER_")},
            "FETCHER_DB": url or str(self.db),
            "FETCHER_BODY_DIR": str(self.bodies),
            "FETCHER_ALLOW_PRIVATE": "true",  # the origin is on loopback
            "FETCHER_LOG_FORMAT": "json",
            "FETCHER_BACKOFF_BASE": "0.05",
            "FETCHER_BACKOFF_MAX": "0.2",
            "FETCHER_HOST_RATE": "0",
            # obeyed in test_robots.py; elsewhere it would add a request per host
            "FETCHER_ROBOTS": "ignore",
        }
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Any] = []
        self.cleanups: list[Callable[[], object]] = []  # run by stop_all, first of all

    def set(self, **variables: object) -> None:
        for name, value in variables.items():
            self.env[f"FETCHER_{name.upper()}"] = str(value)

    def cli(
        self, *args: str, stdin: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fetcher", *args],
            input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout,
        )  # fmt: skip

    def submit(self, urls: list[str]) -> subprocess.CompletedProcess[str]:
        result = self.cli("submit", "-f", "-", stdin="\n".join(urls) + "\n")
        assert result.returncode in (0, 1), result.stderr
        return result

    def drain(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = self.cli("run", "--drain", timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """The daemon in the background; stopped by its pid at the end of the test."""
        log = open(self.workdir / f"daemon-{len(self._procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetcher", "run", *args],
            env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._procs.append(proc)
        self._logs.append(log)
        return proc

    def last_log(self) -> list[dict[str, Any]]:
        """The log of the daemon started last."""
        return self.log_of(len(self._procs) - 1)

    def log_of(self, index: int = 0) -> list[dict[str, Any]]:
        return events((self.workdir / f"daemon-{index}.log").read_text())

    def stats(self) -> dict[str, dict[str, Any]]:
        result = self.cli("stats", "--json")
        assert result.returncode == 0, result.stderr
        return {row["host"]: row for row in json.loads(result.stdout)}

    def status(self) -> dict[str, int]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def results(self) -> list[dict[str, Any]]:
        result = self.cli("results")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run `statements` on the test's database in one transaction, whichever backend;
        the rows of the last."""
        url = self.env["FETCHER_DB"]
        if self.backend == "sqlite":
            db = sqlite3.connect(url)
            try:
                with db:
                    rows = [db.execute(s).fetchall() for s in statements]
            finally:
                db.close()
            return [tuple(row) for row in rows[-1]]

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    rows = [await conn.fetch(s) for s in statements]
            finally:
                await conn.close()
            return [tuple(row) for row in rows[-1]]

        return asyncio.run(run())

    def stop_all(self) -> None:
        for cleanup in self.cleanups:
            cleanup()
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for log in self._logs:
            log.close()


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each behaviour test runs on both backends (`sqlite_only` ones on SQLite alone)."""
    return str(request.param)


@pytest.fixture
def fetcher(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Fetcher]:
    """A fresh database and the means to run fetcher on it; every daemon it starts is
    killed by pid afterwards, also when the test fails."""
    with contextlib.ExitStack() as stack:
        url = None
        if backend == "postgres":
            url = stack.enter_context(postgres.database(request.getfixturevalue("postgres_server")))
        f = Fetcher(tmp_path, url)
        stack.callback(f.stop_all)  # before the database is dropped
        yield f


class RawListener:
    """A TCP listener that does not speak HTTP. `full`: its accept queue is left full, so a
    new connection's SYN is dropped and the connect hangs (a host that does not answer).
    Otherwise a thread reads each connection's request and hangs up without a response."""

    def __init__(self, address: str, *, full: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(0)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._fill = [socket.create_connection((address, self.port), timeout=1)] if full else []
        if not full:
            threading.Thread(target=self._hang_up, daemon=True).start()

    def _hang_up(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)

    def close(self) -> None:
        for sock in (*self._fill, self.sock):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def events(log: str) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon's output."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def peak_rss_kb(result: subprocess.CompletedProcess[str]) -> int:
    """The peak resident memory (VmHWM) a drained daemon reported on its way out."""
    [stopped] = [e for e in events(result.stderr) if e["event"] == "service.stopped"]
    return int(stopped["peak_rss_kb"])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass (bounded, never forever)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_counters_match(fetcher: Fetcher, origin: Origin) -> None:
    """For every host: requests = what the origin received = the sum of classes and errors."""
    stats = fetcher.stats()
    for host, received in origin.stats.requests.items():
        row = stats[host]
        assert row["requests"] == received, (host, row, received)
    for host, row in stats.items():
        classes = sum(row[f"status_{c}xx"] for c in "2345") + row["errors"]
        assert row["requests"] == classes, (host, row)
