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
