"""The unit under a real systemd: the machine's own root booted as a throwaway container
(systemd-nspawn, a volatile root, a private network), fetcher installed in it by
config/install.sh, and the service driven with systemctl as an operator would.

One container for the whole module; the tests run in order and build on each other (started →
fetching → reloaded → killed → wedged → misconfigured → stopped). Skipped, with the reason,
where systemd-nspawn is missing or cannot boot (.ci/run installs systemd-container).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
ORIGIN = ["127.0.0.2", "127.0.0.3"]
PORT = 18080
URLS = [f"http://{a}:{PORT}/ok/{n}" for a in ORIGIN for n in range(20)]
DB = "/var/lib/fetcher/fetcher.db"
FETCHER = "/opt/fetcher/bin/fetcher"
ENV_FILE = "/etc/fetcher/fetcher.env"
TEST_SETTINGS = f"""
FETCHER_ALLOW_PRIVATE=true
FETCHER_LOG_FORMAT=json
FETCHER_HOST_RATE=0
FETCHER_BACKOFF_BASE=0.05
FETCHER_BACKOFF_MAX=0.2
FETCHER_SHUTDOWN_GRACE=2
FETCHER_HOSTS_FILE=/etc/fetcher/hosts.toml
FETCHER_DB={DB}
"""
# the watchdog and its abort made quick enough for a test (the unit's are 30 s)
DROP_IN = "[Service]\nWatchdogSec=2\nTimeoutAbortSec=2\nRestartSec=1\n"


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Container:
    """A booted container and the means to run commands in it (nsenter into its init)."""

    def __init__(self, workdir: Path) -> None:
        self.name = f"fetcher-test-{os.getpid()}"
        self.log = open(workdir / "nspawn.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", "/",
                "--volatile=yes", "--private-network", f"--machine={self.name}",
                f"--bind={REPO}", f"--bind={workdir}", "--console=passive",
                "-b", "systemd.firstboot=off",
            ],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.leader = 0
        self._children: list[subprocess.Popen[bytes]] = []

    def boot(self) -> str:
        """Wait for the container's systemd to reach basic.target ("active"); services of
        the machine's own image may still be starting or failing, and that is no concern."""

        def leader() -> bool:
            children = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
            ).stdout.split()
            self.leader = int(children[0]) if children else 0
            return self.leader > 0 or self.proc.poll() is not None

        _wait(leader, 30, "the container's init")
        if self.proc.poll() is not None:
            return "exited"
        state = ""

        def up() -> bool:
            nonlocal state
            state = self.run("systemctl", "is-active", "basic.target", check=False).stdout.strip()
            return state == "active" or self.proc.poll() is not None

        _wait(up, 90, "the container's basic.target")
        return state

    def run(
        self, *cmd: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["nsenter", "-t", str(self.leader), "-a"]
        if env:
            prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
        result = subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} exited {result.returncode}: {result.stderr[-2000:]}")
        return result

    def background(self, *cmd: str) -> None:
        """Run `cmd` in the container until the container stops."""
        child = subprocess.Popen(
            ["nsenter", "-t", str(self.leader), "-a", *cmd],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._children.append(child)

    def show(self, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", "fetcher", "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def restarted_from(self, pid: str) -> bool:
        """The unit is active again under a main process other than `pid`."""
        shown = self.show("MainPID", "ActiveState")
        return shown["ActiveState"] == "active" and shown["MainPID"] not in ("0", pid)

    def journal(self) -> list[dict[str, object]]:
        """What the daemon wrote to the journal, every line parsed as JSON (a line that is not
        fails the test). `-u fetcher` would add systemd's own lines about the unit
        ("Starting…"), which are not the daemon's; `_SYSTEMD_UNIT=` selects the daemon's."""
        out = self.run(
            "journalctl", "_SYSTEMD_UNIT=fetcher.service", "-o", "cat", "--no-pager"
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def status(self) -> dict[str, int]:
        out = self.run(FETCHER, "status", "--json", env={"FETCHER_DB": DB}).stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def stop(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait(10)
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn powers the container off on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def _can_boot() -> str | None:
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool in ("systemd-nspawn", "nsenter", "pgrep"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install systemd-container; .ci/run does)"
    if not Path("/usr/bin/python3").exists():
        return "the container's /usr/bin/python3 is missing (install.sh makes its venv with it)"
    return None


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """Booted, fetcher installed by config/install.sh from a wheelhouse (the container has no
    network), the env file given the test's settings, the origin running inside."""
    reason = _can_boot()
    if reason is not None:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("systemd")
    workdir.chmod(0o755)
    wheels = workdir / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(wheels), str(REPO),
         "setuptools>=77"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    box = Container(workdir)
    try:
        state = box.boot()
        if state != "active":
            pytest.skip(f"systemd-nspawn could not boot a container here ({state})")
        offline = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}
        box.run("sh", str(REPO / "config" / "install.sh"), env=offline, timeout=300)
        box.run("sh", "-c", f"cat >> {ENV_FILE} <<'EOF'\n{TEST_SETTINGS}EOF")
        box.run("sh", "-c", "echo '[hosts.\"127.0.0.3:18080\"]' > /etc/fetcher/hosts.toml")
        box.run("mkdir", "-p", "/etc/systemd/system/fetcher.service.d")
        box.run("sh", "-c", f"printf '{DROP_IN}' > /etc/systemd/system/fetcher.service.d/t.conf")
        box.run("systemctl", "daemon-reload")
        # the container has no network to wait for: network-online.target (which the unit
        # wants, as it should on a real host) would otherwise wait for it for two minutes
        box.run("systemctl", "mask", "--now", "systemd-networkd-wait-online.service")
        code = (
            "import time; from fetcher.demo import Origin; "
            f"Origin({ORIGIN!r}, {PORT}).start(); time.sleep(3600)"
        )
        box.background("/opt/fetcher/bin/python", "-c", code)
        yield box
    finally:
        box.stop()


def test_start_returns_after_ready_with_a_status_line_as_a_dynamic_user(
    container: Container,
) -> None:
    """`systemctl start` returns once the daemon said READY=1: active, with a STATUS= line, as
    a dynamic user, its database under /var/lib/fetcher created owner-only."""
    container.run("systemctl", "start", "fetcher")
    shown = container.show("ActiveState", "StatusText", "MainPID", "Type", "NotifyAccess")
    assert shown["ActiveState"] == "active" and shown["Type"] == "notify"
    assert shown["StatusText"].startswith("in flight 0, queued 0")
    uid = container.run("ps", "-o", "uid=", "-p", shown["MainPID"]).stdout.strip()
    assert uid.isdigit() and int(uid) >= 61184  # systemd's range for dynamic users
    modes = container.run("stat", "-L", "-c", "%a %u", "/var/lib/fetcher", DB).stdout.split("\n")
    assert modes[0].split() == ["750", uid] and modes[1].split() == ["600", uid]


def test_urls_submitted_by_root_are_fetched_and_counted(container: Container) -> None:
    """URLs submitted with the documented command as root are fetched from the origin inside
    the container; `fetcher stats` reads the counters."""
    container.run(FETCHER, "submit", *URLS, env={"FETCHER_DB": DB})
    _wait(lambda: container.status()["done"] == len(URLS), 60, "every job done")
    out = container.run(FETCHER, "stats", "--json", env={"FETCHER_DB": DB}).stdout
    rows = {row["host"]: row for row in json.loads(out)}
    assert {h: rows[f"{h}:{PORT}"]["status_2xx"] for h in ORIGIN} == {h: 20 for h in ORIGIN}


def test_reload_rereads_the_hosts_file(container: Container) -> None:
    """`systemctl reload` (SIGHUP) re-reads FETCHER_HOSTS_FILE: the new limits are logged."""
    container.run(
        "sh", "-c", "printf '[hosts.\"127.0.0.3:18080\"]\\nrate = 1.0\\n' > /etc/fetcher/hosts.toml"
    )
    container.run("systemctl", "reload", "fetcher")
    _wait(
        lambda: any(e.get("event") == "hosts.reloaded" for e in container.journal()),
        20,
        "hosts.reloaded in the journal",
    )


def test_kill_9_is_restarted_and_every_job_ends(container: Container) -> None:
    """`kill -9` of the main process: systemd starts it again, and every job of a queue that
    was being worked on still ends done."""
    more = [f"http://127.0.0.2:{PORT}/slow/200/k{n}" for n in range(40)]
    container.run(FETCHER, "submit", *more, env={"FETCHER_DB": DB})
    before = container.show("MainPID")["MainPID"]
    _wait(lambda: container.status()["done"] > len(URLS), 30, "the new jobs to start ending")
    container.run("kill", "-9", before)
    _wait(lambda: container.restarted_from(before), 30, "a restarted daemon")
    total = len(URLS) + len(more)
    _wait(lambda: container.status()["done"] == total, 90, "every job done after the restart")
    assert container.status()["running"] == 0


def test_a_wedged_loop_is_killed_by_the_watchdog_and_restarted(container: Container) -> None:
    """A stopped event loop (SIGSTOP) sends no WATCHDOG=1: systemd aborts the daemon after
    WatchdogSec and starts it again."""
    before = container.show("MainPID")["MainPID"]
    restarts = int(container.show("NRestarts")["NRestarts"])
    container.run("kill", "-STOP", before)
    _wait(lambda: container.restarted_from(before), 40, "the watchdog to restart the daemon")
    assert int(container.show("NRestarts")["NRestarts"]) > restarts
    log = container.run("journalctl", "-u", "fetcher", "--no-pager", "-o", "short").stdout
    assert "Watchdog timeout" in log


def test_a_configuration_error_exits_78_and_is_not_restarted(container: Container) -> None:
    """A wrong variable: the daemon exits 78, and systemd leaves it stopped (no restart loop)."""
    container.run("sh", "-c", f"cp {ENV_FILE} {ENV_FILE}.good")
    container.run("sh", "-c", f"echo FETCHER_MAX_CONCURRENCY=lots >> {ENV_FILE}")
    container.run("systemctl", "restart", "fetcher", check=False)  # resets NRestarts to 0
    _wait(lambda: container.show("ActiveState")["ActiveState"] == "failed", 20, "the unit failed")
    time.sleep(3)  # RestartSec=1 in the test: a restart loop would have shown by now
    shown = container.show("ActiveState", "ExecMainStatus", "NRestarts")
    assert shown["ActiveState"] == "failed" and shown["ExecMainStatus"] == "78"
    assert shown["NRestarts"] == "0"  # no automatic restart
    container.run("sh", "-c", f"mv {ENV_FILE}.good {ENV_FILE}")
    container.run("systemctl", "reset-failed", "fetcher")
    container.run("systemctl", "start", "fetcher")


def test_the_api_token_is_the_credential_the_unit_loads(container: Container) -> None:
    """The unit's LoadCredential= line, uncommented (a drop-in here): the daemon takes its API
    token from $CREDENTIALS_DIRECTORY, and the API answers only with it."""
    container.run("sh", "-c", "umask 077; echo cred-token-123 > /etc/fetcher/api-token")
    container.run(
        "sh", "-c", "printf '[Service]\\nLoadCredential=api-token:/etc/fetcher/api-token\\n"
        "Environment=FETCHER_API_ADDR=127.0.0.1:18090\\n'"
        " > /etc/systemd/system/fetcher.service.d/api.conf",
    )  # fmt: skip
    container.run("systemctl", "daemon-reload")
    container.run("systemctl", "restart", "fetcher")
    ask = (
        "import sys, urllib.request as u\n"
        "r = u.Request('http://127.0.0.1:18090/v1/status',\n"
        "              headers={'Authorization': sys.argv[1]})\n"
        "try: print(u.urlopen(r, timeout=5).status)\n"
        "except u.HTTPError as e: print(e.code)\n"
    )
    answers = [
        container.run("/opt/fetcher/bin/python", "-c", ask, header).stdout.strip()
        for header in ("Bearer cred-token-123", "Bearer wrong")
    ]
    assert answers == ["200", "401"]
    container.run("rm", "/etc/systemd/system/fetcher.service.d/api.conf")
    container.run("systemctl", "daemon-reload")
    container.run("systemctl", "restart", "fetcher")


def test_stop_drains_gracefully_and_the_journal_is_json(container: Container) -> None:
    """`systemctl stop`: in flight requests get the grace, the rest goes back to the queue,
    nothing is left running; every line fetcher wrote to the journal parses as JSON."""
    slow = [f"http://127.0.0.3:{PORT}/slow/5000/s{n}" for n in range(6)]
    container.run(FETCHER, "submit", *slow, env={"FETCHER_DB": DB})
    _wait(lambda: container.status()["running"] > 0, 30, "a slow job in flight")
    started = time.monotonic()
    container.run("systemctl", "stop", "fetcher")
    assert time.monotonic() - started < 2 + 10  # FETCHER_SHUTDOWN_GRACE=2, commit and exit
    status = container.status()
    assert status["running"] == 0 and status["queued"] + status["done"] >= len(slow)
    events = [e.get("event") for e in container.journal()]
    assert "service.stopped" in events and "service.crashed" not in events
