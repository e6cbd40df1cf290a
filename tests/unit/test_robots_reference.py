"""fetcher reads robots.txt as Google's reference parser does (RFC 9309's reference
implementation): every check of its suite (`robots_reference.py`), asked through the path the
daemon takes (the product token from FETCHER_USER_AGENT, the URL as `submit` stores it, the
body as `fetch_robots` decodes it, the gate's verdict), gives the reference's answer; the
exceptions are checks fetcher cannot be asked, and those where RFC 9309 asks for fetcher's
answer, each with a test of its reason."""

from __future__ import annotations

import pytest

from fetcher.config import product_token
from fetcher.errors import InvalidURL
from fetcher.model import Verdict
from fetcher.robots import Gate, RobotsGate, decode
from fetcher.urls import MAX_URL_LENGTH, parse_url
from tests.unit.robots_reference import (
    CHECKS,
    LONG_LINE_REASON,
    RFC_DIFFERS,
    UNREACHABLE,
    Check,
)

NOW = 1_700_000_000.0


def gate_says(check: Check) -> bool:
    """Whether the daemon would fetch `check.url` with its robots.txt and agent."""
    target = parse_url(check.url)
    origin = f"{target.scheme}://{target.host_key}"
    gate = RobotsGate(
        token=product_token(check.agent), ttl_s=60, backoff_base=1, backoff_max=4,
        obeyed=lambda key: True, clock=lambda: 0.0, wall=lambda: NOW,
    )  # fmt: skip
    gate.load([origin], [Verdict(origin, NOW, 200, decode(check.robots.encode()))])
    gate_, _ = gate.check(target)
    assert gate_ in (Gate.GO, Gate.REFUSE)
    return gate_ is Gate.GO


def _kind(check: Check) -> str:
    if (check.group, check.agent, check.url) in UNREACHABLE:
        return "unreachable"
    if check.group == "LineTooLong" and len(check.url) > MAX_URL_LENGTH:
        return "too long"
    return "rfc" if (check.group, check.url) in RFC_DIFFERS else "agrees"


def _id(check: Check) -> str:
    return f"{check.group}-{check.agent or 'none'}-{check.url[-40:] or 'none'}"


@pytest.mark.parametrize("check", CHECKS, ids=[_id(c) for c in CHECKS])
def test_fetcher_answers_as_the_reference_does(check: Check) -> None:
    kind = _kind(check)
    if kind == "agrees":
        assert gate_says(check) is check.allowed
    elif kind == "rfc":  # RFC 9309 2.2.2 asks for the other answer (RFC_DIFFERS says why)
        assert gate_says(check) is not check.allowed
    elif kind == "too long":  # LONG_LINE_REASON
        with pytest.raises(InvalidURL, match="longer than"):
            parse_url(check.url)
    elif not check.url:  # UNREACHABLE: no job without a URL
        with pytest.raises(InvalidURL):
            parse_url(check.url)
    elif not check.agent:  # UNREACHABLE: no product token
        with pytest.raises(ValueError, match="product token"):
            product_token(check.agent)
    else:  # UNREACHABLE: the agent's product token is another name than the agent
        assert product_token(check.agent) != check.agent


def test_the_table_is_the_whole_suite_and_its_exceptions_are_few() -> None:
    """141 checks (robots_test.cc at 21fc90b); fetcher differs on 3 where RFC 9309 asks for
    its answer, and 7 cannot be asked (an empty URL or agent, a URL past 4,096 characters, an
    agent with a space)."""
    kinds = [_kind(c) for c in CHECKS]
    assert len(CHECKS) == 141
    assert kinds.count("rfc") == 3 and kinds.count("too long") == 3
    assert kinds.count("unreachable") == 5
    assert kinds.count("agrees") == 130
    assert LONG_LINE_REASON and all(RFC_DIFFERS.values()) and all(UNREACHABLE.values())
