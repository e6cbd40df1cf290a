"""A host's counters, added up from the requests of a batch: the arithmetic of the read-modify-
write that every backend's `JobQueue.record` does under its lock, kept apart so that it is one
piece of code, tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

from fetcher.model import Exchange

__all__ = ["COUNTER_FIELDS", "MINUTE_FIELDS", "Tally", "tally"]


@dataclass(slots=True)
class Tally:
    """Counters of one host (all time) or of one host and minute. Responses count by class
    (1xx as 2xx, anything past 5xx as 5xx); `errors` are requests with no response at all;
    `bytes` are decoded; latencies are of requests that got a response."""

    requests: int = 0
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    errors: int = 0
    bytes: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    last_status: int | None = None  # of the host's last request (None: no response)
    last_request_at: float | None = None  # unix time
    robots_disallowed: int = 0  # jobs its robots.txt forbade: no request sent

    def add(self, e: Exchange) -> None:
        if e.disallowed:
            self.robots_disallowed += 1
            return
        self.requests += 1
        self.bytes += e.bytes
        self.last_status = e.status
        self.last_request_at = e.at
        if e.status is None:
            self.errors += 1
            return
        self.latency_sum_ms += e.latency_ms
        self.latency_max_ms = max(self.latency_max_ms, e.latency_ms)
        kind = e.status // 100
        if kind <= 2:
            self.status_2xx += 1
        elif kind == 3:
            self.status_3xx += 1
        elif kind == 4:
            self.status_4xx += 1
        else:
            self.status_5xx += 1

    def values(self) -> tuple[int | float | None, ...]:
        """In `COUNTER_FIELDS` order."""
        return (
            self.requests, self.status_2xx, self.status_3xx, self.status_4xx, self.status_5xx,
            self.errors, self.bytes, self.latency_sum_ms, self.latency_max_ms, self.last_status,
            self.last_request_at, self.robots_disallowed,
        )  # fmt: skip


COUNTER_FIELDS = tuple(Tally.__dataclass_fields__)
MINUTE_FIELDS = COUNTER_FIELDS[:9]  # a minute row: the requests, not last_* or robots_disallowed


def tally(
    hosts: MutableMapping[str, Tally], exchanges: Iterable[Exchange]
) -> dict[tuple[str, int], Tally]:
    """Add each request, in order, to its host's counters in `hosts` (as read from the store;
    a host without a row starts from zero). Returns the batch's own per-minute counters by
    (host, minute since the epoch), to be added to the stored ones."""
    minutes: dict[tuple[str, int], Tally] = {}
    for e in exchanges:
        counters = hosts.get(e.host)
        if counters is None:
            counters = hosts[e.host] = Tally()
        counters.add(e)
        if e.disallowed:
            continue  # not a request: the minute series counts requests only
        key = (e.host, int(e.at // 60))
        minute = minutes.get(key)
        if minute is None:
            minute = minutes[key] = Tally()
        minute.add(e)
    return minutes
