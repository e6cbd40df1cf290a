"""What the commands share: exit codes, how a duration is written, the read side's opening,
the terminal's console. Light: the read commands import it."""

from __future__ import annotations

import datetime
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from fetcher.jobqueue import QueueReader
    from fetcher.locations import Location

__all__ = [
    "EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "console", "duration", "iso",
    "reader",
]  # fmt: skip

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78


def console() -> Console:
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def reader(path: Location) -> QueueReader:
    from fetcher.backends import open_reader

    return open_reader(path)


def duration(text: str) -> float:
    """Seconds of `90s`, `30m`, `1h`, `2d` (a bare number is seconds)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if match is None:
        raise SystemExit(f"fetcher: not a duration: {text!r} (examples: 90s, 30m, 1h, 2d)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat().replace("+00:00", "Z")
