"""Daemons on one queue: how a daemon is named, and when one counts as dead.

Each daemon registers a row (id, pid, machine) in its queue's database. A daemon on this machine
whose process is gone holds nothing any more: its jobs (and, on PostgreSQL, its hosts) are taken
back at once. One on another machine is taken for dead only when its leases run out.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["dead_here", "new_owner", "process_alive", "this_machine"]


def new_owner() -> str:
    """A daemon's id: unique across machines and restarts."""
    return uuid.uuid4().hex


def this_machine() -> str:
    return socket.gethostname()


def dead_here(daemons: Iterable[Sequence[Any]]) -> list[str]:
    """Of `daemons` (rows of id, pid, machine), those registered on this machine whose process
    is gone."""
    here = this_machine()
    return [str(row[0]) for row in daemons if row[2] == here and not process_alive(int(row[1]))]


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this machine is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
