"""Job objects: every field read as given, every bad one refused with a reason that names the
field and never shows a header's value; `fetcher submit`'s lines, numbered."""

from __future__ import annotations

import base64

import pytest

from fetcher.errors import InvalidJob
from fetcher.jobspec import JobDefaults, JobLimits, read_job
from fetcher.model import JobRequest
from fetcher.submission import submit_lines
from tests.memory_queue import MemoryQueue

LIMITS = JobLimits(max_attempts=4, timeout_s=30.0, max_request_body=1024)
SECRET = "s3cr3t-t0ken-value"


def test_every_field_is_read_as_given() -> None:
    job = read_job(
        {
            "url": "https://API.example.com/v1/things?a=1", "method": "post",
            "headers": {"Authorization": f"Bearer {SECRET}", "Content-Type": "text/json"},
            "body": '{"ünï": 1}', "priority": 7, "not_before": "2026-12-05T08:00:00+01:00",
            "max_attempts": 2, "timeout": 2.5, "retry": True, "metadata": {"batch": 7},
        },
        LIMITS,
    )  # fmt: skip
    assert job.target.url == "https://api.example.com/v1/things?a=1"
    assert (job.method, job.priority, job.max_attempts, job.timeout_s, job.retry) == (
        "POST", 7, 2, 2.5, True,
    )  # fmt: skip
    assert job.headers == (("Authorization", f"Bearer {SECRET}"), ("Content-Type", "text/json"))
    assert job.body == '{"ünï": 1}'.encode()
    assert job.not_before == 1_796_454_000.0  # 07:00 UTC
    assert job.metadata == '{"batch":7}'
    binary = read_job(
        {"url": "http://a/", "body_base64": base64.b64encode(b"\0\xff").decode()}, LIMITS
    )
    assert binary.body == b"\0\xff" and binary.method == "GET"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1], "a job is a JSON object"),
        ({"url": "http://a/", "colour": "red"}, "unknown field 'colour'"),
        ({}, "url: a string is required"),
        ({"url": "ftp://a/"}, "url: scheme must be http or https"),
        ({"url": "http://a/", "method": "TRACE"}, "method: fetcher does not send 'TRACE'"),
        ({"url": "http://a/", "method": 5}, "method: fetcher does not send"),
        ({"url": "http://a/", "headers": {"Host": "b"}}, "headers: Host is set by fetcher"),
        ({"url": "http://a/", "headers": {"Transfer-Encoding": "x"}}, "is set by fetcher"),
        ({"url": "http://a/", "headers": {"Connection": "x"}}, "is set by fetcher"),
        ({"url": "http://a/", "headers": {"Content-Length": "1"}}, "is set by fetcher"),
        ({"url": "http://a/", "headers": {"Bad Name": "x"}}, "is not a header name"),
        ({"url": "http://a/", "headers": {"X-Key": f"{SECRET}\r\nX: y"}}, "holds CR, LF or NUL"),
        ({"url": "http://a/", "headers": {"X-Key": 5}}, "is not a string"),
        ({"url": "http://a/", "headers": ["X"]}, "headers: an object"),
        ({"url": "http://a/", "body": "x" * 1025}, "more than FETCHER_MAX_REQUEST_BODY"),
        ({"url": "http://a/", "body": "x", "body_base64": "eA=="}, "one or the other"),
        ({"url": "http://a/", "body_base64": "***"}, "body_base64: not base64"),
        ({"url": "http://a/", "body": 5}, "body: text"),
        ({"url": "http://a/", "priority": 1001}, "priority: a whole number from -1000"),
        ({"url": "http://a/", "priority": 1.5}, "priority: a whole number"),
        ({"url": "http://a/", "max_attempts": 5}, "max_attempts: a whole number from 1 to 4"),
        ({"url": "http://a/", "timeout": 31}, "timeout: seconds, more than 0 and at most"),
        ({"url": "http://a/", "timeout": 0}, "timeout: seconds"),
        ({"url": "http://a/", "not_before": "tomorrow"}, "not_before: an RFC 3339 time"),
        ({"url": "http://a/", "not_before": "2026-12-05T08:00:00"}, "with its offset"),
        ({"url": "http://a/", "retry": "yes"}, "retry: true or false"),
        ({"url": "http://a/", "metadata": [1]}, "metadata: a JSON object"),
        ({"url": "http://a/", "metadata": {"x": "y" * 4100}}, "metadata: more than 4096 bytes"),
    ],
)
def test_a_bad_field_is_refused_with_its_reason(obj: object, reason: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        read_job(obj, LIMITS)
    assert reason in caught.value.reason
    assert SECRET not in caught.value.reason


def test_the_fingerprint_is_method_url_and_body() -> None:
    """The duplicate rule: the same method, URL and body is one job; another body is another."""
    a = read_job({"url": "http://a/x", "method": "POST", "body": "1"}, LIMITS)
    same = read_job({"url": "http://A/x", "method": "post", "body": "1", "priority": 9}, LIMITS)
    other = read_job({"url": "http://a/x", "method": "POST", "body": "2"}, LIMITS)
    get = read_job({"url": "http://a/x"}, LIMITS)
    assert a.fingerprint == same.fingerprint != other.fingerprint != get.fingerprint
    assert get.fingerprint == ("http://a/x", "GET", "")
    assert a.fingerprint[2] == "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"


def test_defaults_apply_to_the_fields_a_line_leaves_out() -> None:
    defaults = JobDefaults("POST", (("X-A", "1"),), 5, '{"k":1}')
    job = read_job({"url": "http://a/", "priority": 1}, LIMITS, defaults)
    assert (job.method, job.headers, job.priority, job.metadata) == (
        "POST", (("X-A", "1"),), 1, '{"k":1}',
    )  # fmt: skip


async def test_submit_lines_numbers_each_rejection_and_queues_the_rest() -> None:
    """Bare URLs and job objects side by side: a bad line is rejected with its number and
    reason (a job object never echoed: it may hold a secret), the others queued, in order,
    each answered with its id (a duplicate with the id of the job it repeats)."""
    queue = MemoryQueue()
    lines: list[str | bytes] = [
        "http://a.example/1",
        '{"url": "http://a.example/2", "method": "POST", "body": "x"}',
        "# a comment",
        "",
        '{"url": "http://a.example/3", "headers": {"Authorization": "' + SECRET + '"}, "x": 1}',
        '{"url": "http://a.example/4",',
        "not a url",
        '{"url": "http://a.example/2", "method": "POST", "body": "x"}',
        '{"url": "http://a.example/2", "method": "POST", "body": "y"}',
        b"http://a.example/\xff",
    ]
    rejected: list[tuple[int, str | None, str]] = []
    accepted: list[tuple[int, int, bool]] = []
    report = await submit_lines(
        queue, lines, lambda n, shown, why: rejected.append((n, shown, why)), limits=LIMITS,
        on_accept=lambda ns, answers: accepted.extend(
            (n, a.id, a.duplicate) for n, a in zip(ns, answers, strict=True)
        ),
    )  # fmt: skip
    assert (report.queued, report.duplicates, report.rejected) == (3, 1, 4)
    assert accepted == [(1, 1, False), (2, 2, False), (8, 2, True), (9, 3, False)]
    assert [(n, shown) for n, shown, _ in rejected] == [
        (5, None), (6, None), (7, "not a url"), (10, "http://a.example/\\xff"),
    ]  # fmt: skip
    assert "unknown field 'x'" in rejected[0][2] and "not JSON" in rejected[1][2]
    assert all(SECRET not in str(r) for r in rejected)
    row = queue.rows[2].request
    assert (row.method, row.body) == ("POST", b"x")
    assert isinstance(queue.rows[1].request, JobRequest)


async def test_a_not_before_in_the_future_waits_as_retrying() -> None:
    queue = MemoryQueue(wall=lambda: 1000.0)
    lines = [
        '{"url": "http://a/1", "not_before": "1970-01-01T00:20:00Z"}',  # 1200
        '{"url": "http://a/2", "not_before": "1970-01-01T00:10:00Z"}',  # 600: past
    ]
    await submit_lines(queue, lines, lambda *a: None, limits=LIMITS)
    assert (queue.rows[1].state.value, queue.rows[1].next_attempt_at) == ("retrying", 1200.0)
    assert queue.rows[2].state.value == "queued"
