"""Where the database is: the one setting the read-only commands need, found without loading
the whole configuration, so that `fetcher status` and `fetcher stats` answer in tens of ms."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_FILE_VARIABLE", "database_path", "default_database", "env_file_from_environment"]

ENV_FILE_VARIABLE = "FETCHER_ENV_FILE"


def default_database() -> Path:
    """`$STATE_DIRECTORY/fetcher.db` under systemd, else `./var/fetcher.db`."""
    state_dir = os.environ.get("STATE_DIRECTORY")
    return (Path(state_dir.split(":")[0]) if state_dir else Path("var")) / "fetcher.db"


def env_file_from_environment() -> Path | None:
    value = os.environ.get(ENV_FILE_VARIABLE)
    return Path(value) if value else None


def database_path(env_file: Path | None = None) -> Path:
    """FETCHER_DB from the environment, else from the env file, else the default."""
    for key, value in os.environ.items():
        if key.upper() == "FETCHER_DB" and value:
            return Path(value)
    env_file = env_file or env_file_from_environment()
    if env_file is not None and env_file.is_file():
        from dotenv import dotenv_values

        for name, text in dotenv_values(env_file).items():
            if name.upper() == "FETCHER_DB" and text:
                return Path(text)
    return default_database()
