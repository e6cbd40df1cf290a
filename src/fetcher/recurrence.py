"""Recurring jobs: whether a run changed anything, and when the next run is due.

After each run's final outcome a recurring job is due again one interval later, less up to
`JITTER` of it (runs of jobs submitted together drift apart instead of arriving as a herd). With
`adaptive`, the interval follows the content as Nutch's AdaptiveFetchSchedule does: shorter by
`DEC_RATE` after a run whose content changed, longer by `INC_RATE` after one that did not (a 304
or the same body), within the job's bounds. An unchanged run is scheduled from its own end like
any other (Nutch's NUTCH-1564: unmodified pages were fetched again every cycle).

Runs that a stopped daemon missed (more than one interval, and `MIN_OVERDUE_S`, late) are spread
over their jitter window when it comes back, not all sent in its first second: the stores'
`promote_due` does it in SQL, with these constants.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fetcher.model import JobState, Outcome, Recurrence

__all__ = [
    "DEC_RATE", "INC_RATE", "JITTER", "MIN_OVERDUE_S", "changed", "next_run", "recurrence_of",
]  # fmt: skip

JITTER = 0.1  # of the interval: a run is due between 0.9 and 1.0 intervals after the last
INC_RATE = 0.4  # Nutch's defaults (db.fetch.schedule.adaptive.inc_rate / dec_rate)
DEC_RATE = 0.2
MIN_OVERDUE_S = 5.0  # a run promoted a little late is never taken for missed and pushed back


def changed(outcome: Outcome, last_sha256: str | None) -> bool | None:
    """Whether a final outcome's content differs from the job's last done run: None for a run
    that did not end done; False for a 304 or the same body; True otherwise (the first run, a
    new body, or no digest to compare: bodies not kept)."""
    if outcome.state is not JobState.DONE:
        return None
    if outcome.status == 304:
        return False
    return outcome.body_sha256 is None or outcome.body_sha256 != last_sha256


def next_run(
    recurrence: Recurrence,
    changed: bool | None,
    now: float,
    rand: Callable[[], float] = random.random,
) -> tuple[float, float]:
    """(when the next run is due, the interval from now on) after a run that ended at `now`."""
    interval = recurrence.every_s
    if recurrence.adaptive and changed is not None:
        interval *= (1 - DEC_RATE) if changed else (1 + INC_RATE)
        low = recurrence.min_s if recurrence.min_s is not None else interval
        high = recurrence.max_s if recurrence.max_s is not None else interval
        interval = min(max(interval, low), high)
    return now + interval * (1 - JITTER * rand()), interval


def recurrence_of(
    every_s: float | None, adaptive: bool, min_s: float | None, max_s: float | None
) -> Recurrence | None:
    """A stored job's recurrence (None: it runs once)."""
    return None if every_s is None else Recurrence(every_s, adaptive, min_s, max_s)
