"""Shared fixtures: every test starts with no FETCHER_* variable set."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import postgres


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FETCHER_* variable, NOTIFY_SOCKET or STATE_DIRECTORY leaks in from the caller."""
    for key in list(os.environ):
        if key.startswith("FETCHER_") or key in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "STATE_DIRECTORY",
        ):
            monkeypatch.delenv(key)


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """A test id never holds '::' (an IPv6 address would): pytest reads it as a separator in a
    node id given on the command line, so that test could not be run by its id (mutmut does)."""
    if isinstance(val, str) and "::" in val:
        return val.replace("::", "..")
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the run (tests/postgres.py says which)."""
    with postgres.server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A database of this test's own, dropped afterwards."""
    with postgres.database(postgres_server) as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked `sqlite_only` (it works on the SQLite file itself) is not generated for
    PostgreSQL: deselected, not skipped."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "postgres" and item.get_closest_marker("sqlite_only"):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
