"""A PostgreSQL server for the tests, and a database of each test's own on it.

The server: FETCHER_TEST_POSTGRES (a URL of a database to connect to for CREATE DATABASE), by
default the machines' own, `postgresql://127.0.0.1:5432/postgres` with trust authentication.
Where none answers, a throwaway server is started from the installed binaries (Debian's
`postgresql` package: `.ci/run` installs it when missing) in a temporary directory, on a free
port, and stopped by its pid at the end of the run. With CI=true, no PostgreSQL at all fails
the run; elsewhere its tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

DEFAULT_URL = "postgresql://127.0.0.1:5432/postgres"
# read at import: every test runs with the FETCHER_* variables cleared (tests/conftest.py)
CONFIGURED_URL = os.environ.get("FETCHER_TEST_POSTGRES") or DEFAULT_URL


def _answers(url: str) -> str | None:
    """None if `url` takes a connection; else why not."""

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _admin(url: str, statement: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class Throwaway:
    """A PostgreSQL server of the run's own, from the installed binaries."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("no PostgreSQL binaries (/usr/lib/postgresql/*/bin/initdb)")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="fetcher-pg-"))
        self.port = _free_port()
        # initdb refuses root: the package's own user runs the server (its pid is the server's)
        self.uid: int | None = None
        self.gid: int | None = None
        self.groups: list[int] | None = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.uid, self.gid, self.groups = pw.pw_uid, pw.pw_gid, []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        data = self.dir / "data"
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True, timeout=120, cwd=self.dir,
            user=self.uid, group=self.gid, extra_groups=self.groups,
        )  # fmt: skip
        return self._run_server()

    def restart(self, down_s: float) -> None:
        """Stop the server (fast shutdown: every connection is cut), stay down `down_s`, start
        it again on the same data and port."""
        self._stop_server()
        time.sleep(down_s)
        self._run_server()

    def _run_server(self) -> str:
        data = self.dir / "data"
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir,
            user=self.uid, group=self.gid, extra_groups=self.groups,
        )  # fmt: skip
        url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while _answers(url) is not None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the throwaway PostgreSQL server did not start")
            time.sleep(0.2)
        return url

    def stop(self) -> None:
        self._stop_server()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def throwaway() -> Iterator[tuple[Throwaway, str]]:
    """A server of the caller's own (to restart, say), and its URL; CI fails without one."""
    try:
        own = Throwaway()
    except (RuntimeError, KeyError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no PostgreSQL to start ({exc}): .ci/run installs Debian's postgresql")
        pytest.skip(f"no PostgreSQL to start ({exc})")
    try:
        url = own.start()
        yield own, url
    finally:
        own.stop()


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of a server's maintenance database: the configured one, or a throwaway."""
    url = CONFIGURED_URL
    why = _answers(url)
    if why is None:
        yield url
        return
    try:
        throwaway = Throwaway()
    except (RuntimeError, KeyError) as exc:
        missing = f"no PostgreSQL at {url} ({why}), and none to start ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}: CI needs it (.ci/run installs Debian's postgresql)")
        pytest.skip(missing)
    try:
        yield throwaway.start()
    finally:
        throwaway.stop()


@contextlib.contextmanager
def database(server_url: str) -> Iterator[str]:
    """A fresh database of the caller's own on `server_url`, dropped afterwards."""
    name = f"fetcher_test_{uuid.uuid4().hex[:12]}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
