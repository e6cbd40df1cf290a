"""Where the database is: the one setting the read-only commands need, found without loading
the whole configuration, so that `fetcher status` and `fetcher stats` answer in tens of ms.

FETCHER_DB is a SQLite file's path, or a PostgreSQL URL (`postgresql://` or `postgres://`, as
libpq takes it). A URL's password is never printed: `masked` shows it as `***`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ENV_FILE_VARIABLE",
    "Location",
    "body_directory",
    "check_postgres_url",
    "database_location",
    "default_database",
    "env_file_from_environment",
    "is_postgres_url",
    "location_of",
    "masked",
]

ENV_FILE_VARIABLE = "FETCHER_ENV_FILE"
_SCHEMES = ("postgresql", "postgres")

Location = Path | str  # a SQLite file, or a PostgreSQL URL


def is_postgres_url(text: str) -> bool:
    return text.split(":", 1)[0].lower() in _SCHEMES and "://" in text


def check_postgres_url(url: str) -> None:
    """`ValueError` naming what is wrong with a PostgreSQL URL (never showing its password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"not a PostgreSQL URL ({exc}): {masked(url)}") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"a PostgreSQL URL needs a host: {masked(url)}")


def masked(value: object) -> object:
    """A PostgreSQL URL with its password as `***`; anything else as it is."""
    if not isinstance(value, str) or not is_postgres_url(value):
        return value
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value.split("://", 1)[0] + "://***"  # unparsable: show nothing of it
    if password is None:
        return value
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def default_database() -> Path:
    """`$STATE_DIRECTORY/fetcher.db` under systemd, else `./var/fetcher.db`."""
    state_dir = os.environ.get("STATE_DIRECTORY")
    return (Path(state_dir.split(":")[0]) if state_dir else Path("var")) / "fetcher.db"


def env_file_from_environment() -> Path | None:
    value = os.environ.get(ENV_FILE_VARIABLE)
    return Path(value) if value else None


def location_of(text: str) -> Location:
    """FETCHER_DB's text as a location: a URL stays text, anything else is a path."""
    return text if is_postgres_url(text) else Path(text)


def database_location(env_file: Path | None = None) -> Location:
    """FETCHER_DB from the environment, else from the env file, else the default."""
    text = _variable("FETCHER_DB", env_file)
    return location_of(text) if text else default_database()


def body_directory(db: Location, env_file: Path | None = None) -> Path:
    """FETCHER_BODY_DIR as the daemon finds it: set, else `bodies/` beside the database."""
    text = _variable("FETCHER_BODY_DIR", env_file)
    if text:
        return Path(text)
    return (default_database() if isinstance(db, str) else db).parent / "bodies"


def _variable(name: str, env_file: Path | None) -> str | None:
    for key, value in os.environ.items():
        if key.upper() == name and value:
            return value
    env_file = env_file or env_file_from_environment()
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values

        for key, text in dotenv_values(env_file).items():
            if key.upper() == name and text:
                return text
    return None
