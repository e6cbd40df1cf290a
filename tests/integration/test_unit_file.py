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


@pytest.mark.parametrize("credential", [False, True])
def test_unit_exposure_is_what_the_readme_promises(
    analyze: str, tmp_path: Path, credential: bool
) -> None:
    """`systemd-analyze security --offline=true` rates the unit 1.2 or lower, as the README
    says (dropping hardening directives raises it: seven of them gave 1.6), also with the API
    token's credential line in force."""
    unit = tmp_path / "fetcher.service"
    text = UNIT.read_text()
    if credential:
        assert "#LoadCredential=api-token:" in text
        text = text.replace("#LoadCredential=", "LoadCredential=")
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for fetcher.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= 1.2


HARDENING = {
    "CapabilityBoundingSet": [""], "AmbientCapabilities": [""], "NoNewPrivileges": ["yes"],
    "PrivateDevices": ["yes"], "PrivateTmp": ["yes"], "PrivateUsers": ["yes"],
    "PrivateIPC": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
    "ProtectHostname": ["yes"], "ProtectClock": ["yes"], "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"], "ProtectKernelLogs": ["yes"],
    "ProtectControlGroups": ["yes"], "ProtectProc": ["invisible"], "ProcSubset": ["pid"],
    "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"], "RestrictNamespaces": ["yes"],
    "RestrictRealtime": ["yes"], "RestrictSUIDSGID": ["yes"], "LockPersonality": ["yes"],
    "MemoryDenyWriteExecute": ["yes"], "RemoveIPC": ["yes"],
    "SystemCallArchitectures": ["native"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "SystemCallErrorNumber": ["EPERM"], "DevicePolicy": ["closed"], "UMask": ["0077"],
    "DynamicUser": ["yes"],
}  # fmt: skip


def _service_section() -> dict[str, list[str]]:
    """The [Service] directives, each with its values in order (a directive may repeat)."""
    directives: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    return directives


def test_unit_keeps_every_hardening_directive() -> None:
    """Each hardening directive is there with its value: removing or loosening one fails."""
    directives = _service_section()
    assert {key: directives.get(key) for key in HARDENING} == HARDENING


def test_unit_reload_kill_and_notify_are_as_the_daemon_needs() -> None:
    """SIGHUP reloads (ExecReload), SIGTERM goes to the main process first and the rest only
    after (KillMode=mixed), and only the main process may notify (NotifyAccess=main)."""
    directives = _service_section()
    assert directives["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert directives["KillMode"] == ["mixed"] and directives["KillSignal"] == ["SIGTERM"]
    assert directives["NotifyAccess"] == ["main"]


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
