"""The two clocks the daemon reads, passed down as one dependency (tests move them by hand).

`monotonic` measures intervals inside one process (limits, leases, timers); `wall` is Unix time,
what the database keeps and what daemons on several machines share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Clocks"]


class Clocks(NamedTuple):
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
