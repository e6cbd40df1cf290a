"""The read commands load only what they read: no settings, no robots.txt parser, no HTTP
client, no daemon. `fetcher status --json` answered in 0.05 s at 8ecf51e and in 0.27-0.31 s
once the read side pulled in pydantic-settings and Protego (issue 21); this keeps it light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# what a read command must not import: each costs tens of milliseconds, none is needed to read
# a few rows (the layout of the house: the read side sits below the daemon and the settings)
HEAVY = (
    "asyncio", "pydantic", "pydantic_settings", "protego", "httpx", "aiohttp", "aiosqlite",
    "asyncpg",
    "structlog", "fetcher.config", "fetcher.robots", "fetcher.service", "fetcher.fetch",
    "fetcher.transport", "fetcher.model", "fetcher.batch", "fetcher.jobqueue",
)  # fmt: skip

_PROBE = """
import json, sys
from fetcher.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("read") / "fetcher.db"
    submit = [sys.executable, "-m", "fetcher", "--db", str(db), "submit", "http://a.example/"]
    subprocess.run(submit, check=True, capture_output=True, timeout=60)
    return db


@pytest.mark.parametrize("command", [["status", "--json"], ["stats", "--json"], ["results"]])
def test_a_read_command_imports_nothing_heavy(database: Path, command: list[str]) -> None:
    """Each read command, run as a user runs it, answers without loading any of HEAVY."""
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, "--db", str(database), *command],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(probe.stdout.splitlines()[-1])
    assert report["code"] == 0
    loaded = {m for m in report["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)}
    assert loaded == set()
