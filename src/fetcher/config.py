"""Configuration: every `FETCHER_*` variable, its default, and the per-host overrides file.

Settings are built once, at start, and passed in; nothing below this module reads the
environment. A wrong value raises `ConfigError` naming the variable (exit 78).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fetcher import __version__
from fetcher.errors import ConfigError
from fetcher.jobspec import JobLimits
from fetcher.locations import (
    ENV_FILE_VARIABLE,
    check_postgres_url,
    default_database,
    env_file_from_environment,
    is_postgres_url,
    masked,
)

__all__ = [
    "HostLimits", "Settings", "describe", "load_hosts_file", "load_settings", "product_token",
]  # fmt: skip

ENV_PREFIX = "FETCHER_"
# With several daemons (PostgreSQL), a request starts only if it will end this long before its
# host's lease does (the lease must outlast 2 * FETCHER_TIMEOUT + this): room for a renewal's
# round trip and for clocks that drift a little, and at least one second between the old owner's
# last request and the new owner's first (no window of one second holds both)
LEASE_MARGIN_S = 2.0
DEFAULT_TIMEOUT_S = 30.0  # FETCHER_TIMEOUT's default


class Settings(BaseSettings):
    """The daemon's configuration; field `x` is the variable `FETCHER_X`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_default=True
    )

    db: str | None = None  # a SQLite file's path, or a PostgreSQL URL (postgresql://…)
    db_busy_timeout: float = Field(10.0, gt=0, le=3600)
    max_concurrency: int = Field(32, ge=1, le=10_000)
    host_concurrency: int = Field(4, ge=1, le=10_000)
    host_rate: float = Field(4.0, ge=0)
    host_burst: int = Field(1, ge=1, le=100_000)
    hosts_file: Path | None = None
    max_attempts: int = Field(4, ge=1, le=100)
    backoff_base: float = Field(1.0, ge=0)
    backoff_max: float = Field(300.0, ge=0)
    retry_after_max: float = Field(3600.0, ge=0)
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    max_body_bytes: int = Field(10_485_760, ge=0)
    max_redirects: int = Field(5, ge=0, le=100)
    allow_private: bool = False
    user_agent: str = Field(f"fetcher/{__version__}", min_length=1, max_length=512)
    shutdown_grace: float = Field(10.0, ge=0)
    metrics_addr: str | None = None
    body_dir: Path | None = None
    retention_days: float = Field(30.0, ge=0)
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    lease_s: float = Field(90.0, ge=5)
    save_bodies: bool = True
    warc_max_bytes: int = Field(1 << 30, ge=4096)
    warc_max_age: float = Field(86_400.0, ge=1)  # see warc_age_limit
    warc_gzip: bool = False
    robots: Literal["obey", "ignore"] = "obey"
    robots_ttl: float = Field(86_400.0, gt=0)
    crawl_delay_max: float = Field(30.0, ge=0)
    conditional: bool = True
    max_request_body: int = Field(1_048_576, ge=0, le=1 << 30)
    api_addr: str | None = None
    api_token: str | None = Field(None, repr=False)
    api_max_body: int = Field(16_777_216, ge=1024, le=1 << 31)
    webhook_url: str | None = None
    webhook_secret: str | None = Field(None, repr=False)
    webhook_retry_for: float = Field(86_400.0, ge=0)
    min_interval: float = Field(60.0, gt=0)

    @field_validator(
        "host_rate", "backoff_base", "backoff_max", "retry_after_max", "timeout", "warc_max_age"
    )
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("db", mode="before")
    @classmethod
    def _location(cls, value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str) and is_postgres_url(value):
            check_postgres_url(value)
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("user_agent")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be printable text without control characters")
        product_token(value)  # robots.txt groups are matched against it: it must have one
        return value

    @field_validator("metrics_addr", "api_addr")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, for example 127.0.0.1:9464")
        return value

    @field_validator("api_token", "webhook_url", "webhook_secret", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: str | None) -> str | None:
        if value is not None and not _WEBHOOK_SECRET.fullmatch(value):
            raise ValueError("must be whsec_ and the secret's bytes in base64 (24 to 64 bytes)")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from fetcher.errors import InvalidURL
        from fetcher.urls import parse_url

        try:
            return parse_url(value).url
        except InvalidURL as exc:
            raise ValueError(exc.reason) from None

    @model_validator(mode="after")
    def _defaults_from_db(self) -> Settings:
        if not self.db:
            object.__setattr__(self, "db", str(default_database()))
        if self.body_dir is None:
            home = default_database() if self.postgres else self.db_path
            object.__setattr__(self, "body_dir", home.parent / "bodies")
        if self.backoff_max < self.backoff_base:
            raise ValueError("FETCHER_BACKOFF_MAX must be at least FETCHER_BACKOFF_BASE")
        if self.api_addr and not self.api_token and not is_loopback(self.api_addr):
            raise ValueError(
                f"FETCHER_API_ADDR: {self.api_addr} is not a loopback address, and no token is"
                " set: set FETCHER_API_TOKEN (or the systemd credential api-token), or bind"
                " 127.0.0.1"
            )
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "FETCHER_WEBHOOK_URL: webhooks are signed, and FETCHER_WEBHOOK_SECRET is not set"
            )
        shortest = 2 * self.timeout + LEASE_MARGIN_S
        if self.postgres and self.lease_s <= shortest:
            raise ValueError(
                f"FETCHER_LEASE_S: must be more than 2 * FETCHER_TIMEOUT + {LEASE_MARGIN_S:g} s"
                f" = {shortest:g} s with several daemons on PostgreSQL (got {self.lease_s:g}):"
                " a request must be able to end inside the lease that allowed it to start"
            )
        return self

    @property
    def postgres(self) -> bool:
        """Whether FETCHER_DB is a PostgreSQL URL (else it is a SQLite file's path)."""
        return self.db is not None and is_postgres_url(self.db)

    @property
    def db_location(self) -> Path | str:
        """The SQLite file, or the PostgreSQL URL."""
        return self.db_url if self.postgres else self.db_path

    @property
    def db_path(self) -> Path:
        assert self.db is not None and not self.postgres  # set by _defaults_from_db
        return Path(self.db)

    @property
    def db_url(self) -> str:
        assert self.db is not None and self.postgres
        return self.db

    @property
    def warc_age_limit(self) -> float:
        """Seconds a WARC file stays open at most: FETCHER_WARC_MAX_AGE, and with retention on
        at most half of FETCHER_RETENTION_DAYS, so that retention can tell a file nobody will
        close (its daemon's machine died) from a live daemon's (`archive.remove_expired`)."""
        if self.retention_days > 0:
            return min(self.warc_max_age, self.retention_days * 86_400 / 2)
        return self.warc_max_age

    @property
    def bodies_path(self) -> Path | None:
        return self.body_dir if self.save_bodies else None

    @property
    def job_limits(self) -> JobLimits:
        """What a job's own max_attempts, timeout and body may not pass."""
        return JobLimits(
            self.max_attempts, self.timeout, self.max_request_body,
            self.webhook_secret is not None, self.min_interval,
        )  # fmt: skip

    @property
    def default_limits(self) -> HostLimits:
        return HostLimits(
            self.host_rate, self.host_burst, self.host_concurrency, self.robots == "obey"
        )


_PRODUCT_TOKEN = re.compile(r"[A-Za-z_-]+")
_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{32,88}={0,2}")
SECRET_SETTINGS = frozenset({"api_token", "webhook_secret"})  # shown as *** everywhere


def is_loopback(addr: str) -> bool:
    """Whether `host:port` names a loopback address (127.0.0.0/8, ::1, localhost)."""
    host = addr.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def product_token(user_agent: str) -> str:
    """The name robots.txt groups are matched against (RFC 9309 2.2.1): `fetcher` of
    `fetcher/1.2 (+https://…)`, the first product of the User-Agent. `ValueError` when it has
    none of letters, `_` and `-` only (`/1.0`, `bot2/1`, a blank)."""
    product = user_agent.strip().split("/", 1)[0]
    first = product.split(maxsplit=1)[0] if product.strip() else ""
    if not _PRODUCT_TOKEN.fullmatch(first):
        shown = f"; {first!r} is not one" if first else ""
        raise ValueError(
            "must begin with a product token for robots.txt to name (letters, '_' and '-',"
            f" RFC 9309 2.2.1), as in 'fetcher/1.0 (+https://example.com/bot)'{shown}"
        )
    return first


@dataclass(frozen=True, slots=True)
class HostLimits:
    """How hard one host may be pushed: requests per second (0 = no limit), burst, in flight,
    and whether its robots.txt is obeyed."""

    rate: float
    burst: int
    concurrency: int
    robots: bool = True


def load_settings(env_file: Path | None = None) -> Settings:
    """Build the settings from the environment and the env file; `ConfigError` if one is wrong."""
    env_file = env_file or env_file_from_environment()
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"{ENV_FILE_VARIABLE}: {env_file} is not a readable file")
    token = _credential("api-token")  # systemd's LoadCredential=api-token:…
    if any(k.upper() == "FETCHER_API_TOKEN" for k in os.environ):
        token = None  # the environment wins
    try:
        if token is None:
            return Settings(_env_file=env_file)
        return Settings(_env_file=env_file, api_token=token)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None


def _credential(name: str) -> str | None:
    """A systemd credential (`$CREDENTIALS_DIRECTORY/name`, LoadCredential= in the unit)."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    try:
        return (Path(directory) / name).read_text().strip() or None
    except OSError:
        return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field = str(error["loc"][0])
    name = ENV_PREFIX + field.upper()
    value = error.get("input")
    hidden = isinstance(value, dict) or value is None or field in SECRET_SETTINGS
    shown = "" if hidden else f" (got {str(masked(value))!r})"
    return f"{name}: {message.lower() if message[:1].isupper() else message}{shown}"


def describe(settings: Settings, env_file: Path | None = None) -> list[tuple[str, Any, str]]:
    """Each variable with its effective value and where it came from."""
    env_file = env_file or env_file_from_environment()
    from_file = {k.upper(): v for k, v in dotenv_values(env_file).items()} if env_file else {}
    rows = []
    for field in Settings.model_fields:
        name = ENV_PREFIX + field.upper()
        if any(key.upper() == name for key in os.environ):
            source = "environment"
        elif name in from_file:
            source = f"env file {env_file}"
        else:
            source = "default"
        value = getattr(settings, field)
        if field in SECRET_SETTINGS and value is not None:
            value = "***"
        rows.append((name, masked(value) if field == "db" else value, source))
    return rows


def load_hosts_file(path: Path, defaults: HostLimits) -> dict[str, HostLimits]:
    """Per-host overrides from TOML (`[hosts."key"] rate/burst/concurrency/robots`); fields left out
    take the global value. `ConfigError` names the file and the key that is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"FETCHER_HOSTS_FILE: cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"FETCHER_HOSTS_FILE: {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"hosts"}
    if unknown:
        raise ConfigError(f"FETCHER_HOSTS_FILE: {path}: unknown table {sorted(unknown)[0]!r}")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise ConfigError(f"FETCHER_HOSTS_FILE: {path}: 'hosts' must be a table")
    from fetcher.errors import InvalidURL
    from fetcher.urls import normalize_host_key

    limits = {}
    for key, table in hosts.items():
        where = f"FETCHER_HOSTS_FILE: {path}: hosts.{key!r}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        try:
            host = normalize_host_key(key)
        except InvalidURL as exc:
            raise ConfigError(f"{where}: not a host key ({exc.reason})") from None
        limits[host] = _host_limits(table, defaults, where)
    return limits


def _host_limits(table: dict[str, Any], defaults: HostLimits, where: str) -> HostLimits:
    unknown = set(table) - {"rate", "burst", "concurrency", "robots"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key")
    rate = table.get("rate", defaults.rate)
    burst = table.get("burst", defaults.burst)
    concurrency = table.get("concurrency", defaults.concurrency)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < math.inf:
        raise ConfigError(f"{where}.rate: must be a number >= 0 (got {rate!r})")
    for name, value in (("burst", burst), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{name}: must be a whole number >= 1 (got {value!r})")
    robots = table.get("robots", defaults.robots)
    if not isinstance(robots, bool):
        raise ConfigError(f"{where}.robots: must be true or false (got {robots!r})")
    return HostLimits(float(rate), burst, concurrency, robots)
