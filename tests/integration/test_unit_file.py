"""The systemd unit: its directives verify, and its exposure score is 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "config" / "fetcher.service"


@pytest.fixture
def analyze() -> str:
    """systemd-analyze; CI installs it (package systemd) when it is missing."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run does this)")
    return path


def test_unit_verifies_with_the_installed_fetcher(analyze: str, tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing wrong, with ExecStart at this fetcher."""
    fetcher = Path(sys.executable).parent / "fetcher"
    unit = tmp_path / "fetcher.service"
    unit.write_text(UNIT.read_text().replace("/opt/fetcher/bin/fetcher", str(fetcher)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    problems = [line for line in result.stderr.splitlines() if "fetcher.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_unit_exposure_is_at_most_2(analyze: str) -> None:
    """`systemd-analyze security --offline=true` rates the unit 2.0 or lower."""
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for fetcher.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= 2.0


def test_unit_has_what_operators_rely_on() -> None:
    """Type=notify, the env file, the state directory, no restart loop on exit 78, a
    watchdog, and a stop timeout longer than the default shutdown grace."""
    text = UNIT.read_text()
    for line in ("Type=notify", "EnvironmentFile=-/etc/fetcher/fetcher.env",
                 "StateDirectory=fetcher", "Restart=on-failure", "RestartPreventExitStatus=78",
                 "DynamicUser=yes"):  # fmt: skip
        assert line in text.splitlines(), line
    assert int(re.search(r"^WatchdogSec=(\d+)", text, re.M)[1]) > 0  # type: ignore[index]
    assert int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M)[1]) > 10  # type: ignore[index]
