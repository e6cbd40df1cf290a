"""The Prometheus endpoint (FETCHER_METRICS_ADDR): per-host counters that move with the stats
database, latency histograms, requests in flight, and the queue by state.

Counters are advanced after the batch that holds their requests has committed, so a scrape
never shows a request the database does not (they agree once the batch in hand is written).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter

from fetcher.counters import Tally
from fetcher.model import Exchange

__all__ = ["Metrics"]

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The metrics of one daemon, served on `addr` (host:port) from a thread of their own."""

    def __init__(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = PromCounter(
            "fetcher_requests", "Requests sent, by host key", ["host"], registry=r
        )
        self._responses = PromCounter(
            "fetcher_responses", "Responses, by host key and status class", ["host", "class"],
            registry=r,
        )  # fmt: skip
        self._errors = PromCounter(
            "fetcher_errors", "Requests without a response, by host key", ["host"], registry=r
        )
        self._bytes = PromCounter(
            "fetcher_response_bytes", "Decoded body bytes, by host key", ["host"], registry=r
        )
        self._disallowed = PromCounter(
            "fetcher_robots_disallowed", "Jobs refused by robots.txt, by host key", ["host"],
            registry=r,
        )  # fmt: skip
        self._latency = Histogram(
            "fetcher_request_duration_seconds", "Time to a whole response, by host key",
            ["host"], buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("fetcher_in_flight", "Requests in flight", registry=r)
        self._queue = Gauge("fetcher_queue_jobs", "Jobs by state", ["state"], registry=r)
        self.loopback = (
            ipaddress.ip_address(host.strip("[]")).is_loopback if _is_ip(host) else False
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._server, self._thread = start_http_server(int(port), host.strip("[]"), registry=r)

    def count(self, exchanges: Iterable[Exchange]) -> None:
        """Requests whose batch has just committed, added up as the stored counters are
        (`counters.Tally`), so the two agree class by class."""
        hosts: dict[str, Tally] = {}
        for e in exchanges:
            counters = hosts.get(e.host)
            if counters is None:
                counters = hosts[e.host] = Tally()
            counters.add(e)
            if e.status is not None and not e.disallowed:
                self._latency.labels(e.host).observe(e.latency_ms / 1000)
        for host, t in hosts.items():
            if t.requests:  # a host's series appear with its first request, bytes or not
                self._requests.labels(host).inc(t.requests)
                self._bytes.labels(host).inc(t.bytes)
            if t.errors:
                self._errors.labels(host).inc(t.errors)
            if t.robots_disallowed:
                self._disallowed.labels(host).inc(t.robots_disallowed)
            for cls, n in (("2xx", t.status_2xx), ("3xx", t.status_3xx),
                           ("4xx", t.status_4xx), ("5xx", t.status_5xx)):  # fmt: skip
                if n:
                    self._responses.labels(host, cls).inc(n)

    def queue(self, counts: Mapping[str, int]) -> None:
        for state, n in counts.items():
            self._queue.labels(state).set(n)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
