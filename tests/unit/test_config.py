"""Configuration: defaults, env file, and wrong values exiting 78 with the variable named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fetcher.cli import main
from fetcher.config import HostLimits, Settings, load_hosts_file, load_settings
from fetcher.errors import ConfigError


def test_defaults_match_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every default is the one SPEC gives; the database lives in ./var without systemd."""
    s = load_settings()
    assert (s.max_concurrency, s.host_concurrency, s.host_rate, s.host_burst) == (32, 4, 4.0, 1)
    assert (s.max_attempts, s.timeout, s.max_body_bytes, s.max_redirects) == (4, 30, 10485760, 5)
    assert s.db_path == Path("var/fetcher.db") and not s.allow_private
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/fetcher")
    assert load_settings().db_path == Path("/var/lib/fetcher/fetcher.db")


def test_env_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values come from the env file unless the environment sets them."""
    env = tmp_path / "fetcher.env"
    env.write_text("FETCHER_HOST_RATE=2.5\nFETCHER_MAX_ATTEMPTS=7\n")
    monkeypatch.setenv("FETCHER_MAX_ATTEMPTS", "9")
    s = load_settings(env)
    assert (s.host_rate, s.max_attempts) == (2.5, 9)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FETCHER_MAX_CONCURRENCY", "0"),
        ("FETCHER_HOST_RATE", "fast"),
        ("FETCHER_TIMEOUT", "-1"),
        ("FETCHER_LOG_FORMAT", "xml"),
        ("FETCHER_ALLOW_PRIVATE", "maybe"),
        ("FETCHER_METRICS_ADDR", "nowhere"),
        ("FETCHER_HOST_RATE", "inf"),
        ("FETCHER_WARC_MAX_AGE", "0"),  # a file per record
        ("FETCHER_WARC_MAX_AGE", "inf"),
        ("FETCHER_USER_AGENT", "/1.0"),  # no product token for robots.txt to name
        ("FETCHER_USER_AGENT", "bot2/1"),
    ],
)
def test_wrong_value_exits_78_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    """A wrong value: exit 78 and one line naming the variable, no traceback."""
    monkeypatch.setenv(name, value)
    assert main(["config"]) == 78
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_hosts_file_overrides_and_errors(tmp_path: Path) -> None:
    """A hosts file overrides per host; a bad one names the file and the key."""
    defaults = HostLimits(4.0, 1, 4)
    good = tmp_path / "hosts.toml"
    good.write_text('[hosts."API.example.com"]\nrate = 1.5\n[hosts."b.example:8080"]\nburst = 3\n')
    assert load_hosts_file(good, defaults) == {
        "api.example.com": HostLimits(1.5, 1, 4),
        "b.example:8080": HostLimits(4.0, 3, 4),
    }
    bad = tmp_path / "bad.toml"
    bad.write_text('[hosts."a.example"]\nrate = -1\n')
    with pytest.raises(ConfigError, match=r"bad.toml.*a.example.*rate"):
        load_hosts_file(bad, defaults)
    bad.write_text('[hosts."a.example"]\nspeed = 1\n')
    with pytest.raises(ConfigError, match="speed: unknown key"):
        load_hosts_file(bad, defaults)
    bad.write_text("[hosts\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_hosts_file(bad, defaults)


def test_read_commands_need_only_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats/status/results find FETCHER_DB in the env file, and a wrong variable they do not
    use does not stop them (an operator can look while fixing the configuration)."""
    env = tmp_path / "fetcher.env"
    env.write_text(f"FETCHER_DB={tmp_path / 'elsewhere.db'}\n")
    monkeypatch.setenv("FETCHER_MAX_CONCURRENCY", "lots")
    assert main(["--env-file", str(env), "status", "--json"]) == 1
    assert f"no database at {tmp_path / 'elsewhere.db'}" in capsys.readouterr().err
    monkeypatch.delenv("FETCHER_MAX_CONCURRENCY")
    assert main(["--env-file", str(env), "submit", "http://a.example/1"]) == 0
    monkeypatch.setenv("FETCHER_MAX_CONCURRENCY", "lots")
    capsys.readouterr()
    assert main(["--env-file", str(env), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queued"] == 1
    for command in (["stats", "--json"], ["results"]):
        assert main(["--env-file", str(env), *command]) == 0, command
    assert main(["--env-file", str(env), "submit", "http://a.example/2"]) == 78  # it needs all
    assert "FETCHER_MAX_CONCURRENCY" in capsys.readouterr().err


def test_a_postgres_url_selects_postgres_and_its_password_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """FETCHER_DB=postgresql://… is PostgreSQL (a path stays SQLite); `fetcher config` shows
    the URL with its password masked, in both formats; the bodies default beside the default
    database, not inside the URL."""
    url = "postgresql://fetch:s3cr%40t@db.example:5433/queue?sslmode=require"
    monkeypatch.setenv("FETCHER_DB", url)
    s = load_settings()
    assert s.postgres and s.db_location == url
    assert s.body_dir == Path("var/bodies")
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "s3cr" not in text
    assert "FETCHER_DB=postgresql://fetch:***@db.example:5433/queue?sslmode=require" in text
    assert main(["config", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["FETCHER_DB"]["value"]
    assert shown == "postgresql://fetch:***@db.example:5433/queue?sslmode=require"
    monkeypatch.setenv("FETCHER_DB", "var/queue.db")
    assert not load_settings().postgres


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FETCHER_TIMEOUT": "30", "FETCHER_LEASE_S": "60"}, "FETCHER_LEASE_S"),
        ({"FETCHER_TIMEOUT": "5", "FETCHER_LEASE_S": "12"}, "FETCHER_LEASE_S"),
        ({"FETCHER_DB": "postgresql://:notaport/x"}, "FETCHER_DB"),
    ],
)
def test_a_lease_too_short_for_the_timeout_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    named: str,
) -> None:
    """With several daemons a request must end inside the lease that let it start: a lease of
    2 x FETCHER_TIMEOUT + 2 s or less exits 78 naming FETCHER_LEASE_S; the defaults pass."""
    monkeypatch.setenv("FETCHER_DB", "postgresql://127.0.0.1/fetcher")
    assert load_settings().lease_s > 2 * load_settings().timeout + 2  # the defaults pass
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 78
    assert named in capsys.readouterr().err
    monkeypatch.setenv("FETCHER_DB", "var/fetcher.db")  # one daemon: no host lease to outlast
    if named == "FETCHER_LEASE_S":
        assert main(["config"]) == 0


def test_every_variable_is_documented_in_the_readme_and_the_example_env_file() -> None:
    """An operator finds every FETCHER_* variable in the README's configuration table and,
    commented out with its default, in config/fetcher.env."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    example = (root / "config" / "fetcher.env").read_text()
    for field in Settings.model_fields:
        name = f"FETCHER_{field.upper()}"
        assert f"| `{name}` |" in readme, name
        assert f"{name}=" in example, name


SECRET = "whsec_" + "A" * 43 + "="


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"FETCHER_API_ADDR": "0.0.0.0:8080"}, "FETCHER_API_TOKEN"),
        ({"FETCHER_API_ADDR": "[::]:8080"}, "FETCHER_API_TOKEN"),
        ({"FETCHER_API_ADDR": "localhost"}, "host:port"),
        ({"FETCHER_WEBHOOK_URL": "https://hooks.example/in"}, "FETCHER_WEBHOOK_SECRET"),
        ({"FETCHER_WEBHOOK_SECRET": "not-whsec"}, "whsec_"),
        ({"FETCHER_WEBHOOK_SECRET": "whsec_c2hvcnQ="}, "24 to 64 bytes"),
        ({"FETCHER_WEBHOOK_URL": "ftp://x", "FETCHER_WEBHOOK_SECRET": SECRET}, "http"),
    ],
)
def test_the_api_and_webhooks_are_configured_safely_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_an_api_on_loopback_needs_no_token_and_a_token_opens_any_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for addr in ("127.0.0.1:8080", "[::1]:8080", "127.0.0.5:1"):
        monkeypatch.setenv("FETCHER_API_ADDR", addr)
        assert load_settings().api_addr == addr
    monkeypatch.setenv("FETCHER_API_ADDR", "0.0.0.0:8080")
    monkeypatch.setenv("FETCHER_API_TOKEN", "t")
    assert load_settings().api_token == "t"


def test_the_api_token_comes_from_the_systemd_credential_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "api-token").write_text("from-the-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("FETCHER_API_ADDR", "0.0.0.0:8080")
    assert load_settings().api_token == "from-the-credential"
    monkeypatch.setenv("FETCHER_API_TOKEN", "from-the-environment")
    assert load_settings().api_token == "from-the-environment"


def test_secrets_are_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FETCHER_API_TOKEN", "tok-123-secret")
    monkeypatch.setenv("FETCHER_WEBHOOK_SECRET", SECRET)
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "tok-123-secret" not in out and SECRET not in out and out.count("***") >= 2
    assert "tok-123-secret" not in repr(load_settings())
    monkeypatch.setenv("FETCHER_WEBHOOK_SECRET", "whsec_!!!!-wrong-but-secret")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "wrong-but-secret" not in str(refused.value)
