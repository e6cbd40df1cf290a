"""The counters' arithmetic: a batch added to stored rows, against a plain recount."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from fetcher.counters import COUNTER_FIELDS, MINUTE_FIELDS, Tally, tally
from fetcher.model import Exchange

exchanges = st.lists(
    st.builds(
        Exchange,
        host=st.sampled_from(["a:80", "b:80", "c:443"]),
        status=st.one_of(st.none(), st.integers(100, 999)),
        bytes=st.integers(0, 10**9),
        latency_ms=st.floats(0, 60_000),
        at=st.floats(1.7e9, 1.7e9 + 600),
        disallowed=st.booleans(),
    ),
    max_size=60,
)


def _recount(batch: list[Exchange]) -> dict[str, dict[str, object]]:
    """The same counters, counted plainly from the list."""
    out: dict[str, dict[str, object]] = {}
    for host in {e.host for e in batch}:
        refused = [e for e in batch if e.host == host and e.disallowed]
        mine = [e for e in batch if e.host == host and not e.disallowed]
        answered = [e for e in mine if e.status is not None]
        codes = [e.status for e in answered if e.status is not None]
        out[host] = {
            "requests": len(mine),
            "status_2xx": sum(1 for code in codes if code < 300),
            "status_3xx": sum(1 for code in codes if 300 <= code < 400),
            "status_4xx": sum(1 for code in codes if 400 <= code < 500),
            "status_5xx": sum(1 for code in codes if code >= 500),
            "errors": len(mine) - len(answered),
            "bytes": sum(e.bytes for e in mine),
            "latency_sum_ms": sum(e.latency_ms for e in answered),
            "latency_max_ms": max((e.latency_ms for e in answered), default=0.0),
            "last_status": mine[-1].status if mine else None,
            "last_request_at": mine[-1].at if mine else None,
            "robots_disallowed": len(refused),
        }
    return out


@given(exchanges, exchanges)
def test_two_batches_on_stored_rows_equal_a_recount_of_both(
    first: list[Exchange], second: list[Exchange]
) -> None:
    """Counting batch 1, then batch 2 onto the rows batch 1 left (as the store does), gives
    what counting both at once gives; the minute rows of both sum to the counters."""
    hosts: dict[str, Tally] = {}
    minutes = [tally(hosts, first)]
    stored = {host: dataclasses.replace(t) for host, t in hosts.items()}  # a row read back
    minutes.append(tally(stored, second))
    expected = _recount(first + second)
    assert set(stored) == set(expected)
    for host, want in expected.items():
        got = dict(zip(COUNTER_FIELDS, stored[host].values(), strict=True))
        assert got.keys() == want.keys()
        for name, value in want.items():
            if isinstance(value, float) and name == "latency_sum_ms":
                assert abs(got[name] - value) <= 1e-6 * max(1.0, value), name  # type: ignore[operator]
            else:
                assert got[name] == value, (name, got, want)
        for i, name in enumerate(MINUTE_FIELDS[:7]):
            in_minutes = sum(
                t.values()[i]  # type: ignore[misc]
                for batch in minutes
                for (h, _), t in batch.items()
                if h == host
            )
            assert in_minutes == want[name], name


def test_classes_at_their_edges() -> None:
    """1xx counts as 2xx and anything past 5xx as 5xx; each edge lands in its class."""
    codes = {100: 0, 199: 0, 200: 0, 299: 0, 300: 1, 399: 1, 400: 2, 499: 2, 500: 3, 599: 3, 999: 3}
    for code, index in codes.items():
        t = Tally()
        t.add(Exchange("h", code, 0, 1.0, 0.0))
        classes = [t.status_2xx, t.status_3xx, t.status_4xx, t.status_5xx]
        assert classes == [int(i == index) for i in range(4)], code
        assert t.errors == 0


def test_an_error_counts_a_request_and_its_bytes_but_no_latency() -> None:
    """No response: an error, no class; its latency is not in the average or the maximum."""
    t = Tally()
    t.add(Exchange("h", 200, 10, 5.0, 100.0))
    t.add(Exchange("h", None, 3, 900.0, 160.0))
    assert t.values() == (2, 1, 0, 0, 0, 1, 13, 5.0, 5.0, None, 160.0, 0)
    t.add(Exchange("h", None, 0, 0.0, 170.0, disallowed=True))  # refused: sent nothing
    assert t.values() == (2, 1, 0, 0, 0, 1, 13, 5.0, 5.0, None, 160.0, 1)


def test_minutes_split_at_the_minute_boundary() -> None:
    """A request at 59.999 s and one at 60.0 s are in different minutes; one host's minute
    holds only its own requests."""
    minutes = tally(
        {},
        [
            Exchange("a", 200, 1, 1.0, 59.999),
            Exchange("a", 200, 2, 1.0, 60.0),
            Exchange("b", 200, 4, 1.0, 60.5),
            Exchange("a", 404, 8, 3.0, 119.9),
        ],
    )
    assert {key: t.bytes for key, t in minutes.items()} == {("a", 0): 1, ("a", 1): 10, ("b", 1): 4}
    assert minutes[("a", 1)].latency_max_ms == 3.0
    assert minutes[("a", 1)].status_4xx == 1


def test_the_metrics_count_a_refused_job_apart_from_requests() -> None:
    """A job robots.txt refused is `fetcher_robots_disallowed_total`, not a request."""
    from fetcher.metrics import Metrics

    metrics = Metrics("127.0.0.1:0")
    try:
        metrics.count([Exchange("h", 200, 5, 1.0, 0.0), Exchange("h", None, 0, 0.0, 0.0, True)])
        value = metrics.registry.get_sample_value
        assert value("fetcher_requests_total", {"host": "h"}) == 1
        assert value("fetcher_robots_disallowed_total", {"host": "h"}) == 1
        assert value("fetcher_errors_total", {"host": "h"}) is None
    finally:
        metrics.close()
