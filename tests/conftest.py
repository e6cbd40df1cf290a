"""Shared fixtures: every test starts with no FETCHER_* variable set."""

from __future__ import annotations

import os

import pytest


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
