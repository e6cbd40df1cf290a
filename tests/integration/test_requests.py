"""Jobs are requests, against the real daemon and the loopback origin, on both backends: each
field on the wire, refused inputs, the duplicate rule, redirects of a POST, credentials kept to
their origin, priority, non-idempotent methods, a schedule that outlives a restart, per-job
limits, cancel, results that name the job, and a secret header value that is never shown."""

from __future__ import annotations

import base64
import json
import signal
import time
from typing import Any

import pytest

from fetcher.demo import Origin, Received

from .conftest import Fetcher, events, wait_until

pytestmark = pytest.mark.integration

SECRET = "Zs3cr3tV4lu3"  # in an Authorization header, a Cookie and an X-Api-Key


def submit_jobs(fetcher: Fetcher, *jobs: dict[str, Any] | str, flags: tuple[str, ...] = ()) -> Any:
    """`fetcher submit --json -f -` of JSON Lines (or bare URLs); the answers, by line."""
    lines = "\n".join(j if isinstance(j, str) else json.dumps(j) for j in jobs) + "\n"
    result = fetcher.cli("submit", "--json", "-f", "-", *flags, stdin=lines)
    assert result.returncode in (0, 1), result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    return result, {a["line"]: a for a in answers}


def received(origin: Origin, path: str) -> list[Received]:
    return [r for r in origin.stats.received if r.path == path]


def test_each_field_goes_on_the_wire_as_given(fetcher: Fetcher, origin: Origin) -> None:
    """Method, headers (a job's Accept replacing fetcher's), a text and a binary body, as the
    origin received them; the flags of `submit` give bare URLs theirs."""
    binary = bytes(range(256))
    submit_jobs(
        fetcher,
        {"url": origin.url("ok/get"), "headers": {"X-Trace": "t-1", "Accept": "text/plain"}},
        {"url": origin.url("ok/post"), "method": "POST", "body": "naïve=1",
         "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"url": origin.url("ok/put"), "method": "PUT",
         "body_base64": base64.b64encode(binary).decode()},
        {"url": origin.url("ok/patch"), "method": "PATCH", "body": "{}"},
        {"url": origin.url("ok/delete"), "method": "DELETE"},
        {"url": origin.url("ok/head"), "method": "HEAD"},
        {"url": origin.url("ok/options"), "method": "OPTIONS"},
    )  # fmt: skip
    submit_jobs(
        fetcher, origin.url("ok/flagged"),
        flags=("--method", "POST", "--header", "X-Flag: on", "--metadata", '{"from": "flags"}'),
    )  # fmt: skip
    fetcher.drain()
    [get] = received(origin, "/ok/get")
    assert (get.method, get.headers["X-Trace"], get.headers["Accept"]) == (
        "GET",
        "t-1",
        "text/plain",
    )
    assert get.headers["User-Agent"].startswith("fetcher/") and get.body == b""
    [post] = received(origin, "/ok/post")
    assert (post.method, post.body) == ("POST", "naïve=1".encode())
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert post.headers["Content-Length"] == str(len("naïve=1".encode()))
    [put] = received(origin, "/ok/put")
    assert (put.method, put.body) == ("PUT", binary)
    others = ("patch", "delete", "head", "options")
    assert [received(origin, f"/ok/{m}")[0].method for m in others] == [m.upper() for m in others]
    [flagged] = received(origin, "/ok/flagged")
    assert (flagged.method, flagged.headers["X-Flag"]) == ("POST", "on")
    results = {r["url"].rsplit("/", 1)[1]: r for r in fetcher.results()}
    assert results["flagged"]["metadata"] == {"from": "flags"}
    assert results["head"]["method"] == "HEAD" and results["head"]["state"] == "done"


def test_a_bad_line_is_refused_with_its_number_and_reason_and_the_rest_queued(
    fetcher: Fetcher,
) -> None:
    """Bad JSON, an unknown field, a forbidden header, a body over FETCHER_MAX_REQUEST_BODY,
    metadata over 4 KiB, a method fetcher does not send: each rejected with its line number
    and reason (the secret in one never shown); the good lines queued; exit 1."""
    fetcher.set(max_request_body=10)
    good = {"url": "http://ok.example/1"}
    result, answers = submit_jobs(
        fetcher,
        good,
        '{"url": "http://a.example/", ',
        {"url": "http://a.example/", "colour": "red", "headers": {"Authorization": SECRET}},
        {"url": "http://a.example/", "headers": {"Host": "elsewhere"}},
        {"url": "http://a.example/", "method": "POST", "body": "x" * 11},
        {"url": "http://a.example/", "metadata": {"k": "v" * 5000}},
        {"url": "http://a.example/", "method": "CONNECT"},
        {"url": "http://ok.example/2", "method": "POST", "body": "1234567890"},
    )
    assert result.returncode == 1
    for line, reason in (
        (2, "not JSON"), (3, "unknown field 'colour'"), (4, "headers: Host is set by fetcher"),
        (5, "more than FETCHER_MAX_REQUEST_BODY (10)"), (6, "metadata: more than 4096 bytes"),
        (7, "method: fetcher does not send 'CONNECT'"),
    ):  # fmt: skip
        assert reason in answers[line]["error"]
        assert f"rejected: line {line}: " in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert [answers[1]["duplicate"], answers[8]["duplicate"]] == [False, False]
    assert "queued 2, already queued 0, rejected 6" in result.stderr
    assert fetcher.status()["queued"] == 2


def test_the_same_request_is_queued_once_another_body_is_another_job(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A job already queued with the same method, URL and body: the answer names it, and it is
    sent once; the same POST with another body is a job of its own."""
    post = {"url": origin.url("ok/form"), "method": "POST", "body": "a=1"}
    _, first = submit_jobs(fetcher, post, {**post, "priority": 5}, {**post, "body": "a=2"})
    _, again = submit_jobs(fetcher, post, {**post, "method": "PUT"})
    assert first[2] == {"line": 2, "id": first[1]["id"], "duplicate": True}
    assert again[1] == {"line": 1, "id": first[1]["id"], "duplicate": True}
    assert not first[3]["duplicate"] and not again[2]["duplicate"]
    fetcher.drain()
    sent = received(origin, "/ok/form")
    assert sorted((r.method, r.body) for r in sent) == [
        ("POST", b"a=1"), ("POST", b"a=2"), ("PUT", b"a=1"),
    ]  # fmt: skip


def test_a_303_makes_a_post_a_get_and_a_307_keeps_it(fetcher: Fetcher, origin: Origin) -> None:
    submit_jobs(
        fetcher,
        {"url": origin.url("moved/303/here/a"), "method": "POST", "body": "payload"},
        {"url": origin.url("moved/307/here/b"), "method": "POST", "body": "payload"},
    )
    fetcher.drain()
    [after_303] = received(origin, "/ok/a")
    [after_307] = received(origin, "/ok/b")
    assert (after_303.method, after_303.body) == ("GET", b"")
    assert (after_307.method, after_307.body) == ("POST", b"payload")
    results = {r["url"].rsplit("/", 1)[1]: r for r in fetcher.results()}
    assert results["a"]["method"] == results["b"]["method"] == "POST"  # as submitted


def test_credentials_are_not_sent_to_another_origin_after_a_redirect(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Authorization and Cookie go with a redirect on the same origin, and not to another host
    (on PostgreSQL the job is moved to that host's queue and keeps to the same rule)."""
    headers = {"Authorization": f"Bearer {SECRET}", "Cookie": f"s={SECRET}", "X-Other": "kept"}
    submit_jobs(
        fetcher,
        {"url": origin.url("moved/302/here/same"), "headers": headers},
        {"url": origin.url(f"moved/302/{origin.host(1)}/elsewhere"), "headers": headers},
    )
    fetcher.drain()
    [same] = received(origin, "/ok/same")
    [elsewhere] = received(origin, "/ok/elsewhere")
    assert same.headers["Authorization"] == f"Bearer {SECRET}" and "Cookie" in same.headers
    assert "Authorization" not in elsewhere.headers and "Cookie" not in elsewhere.headers
    assert elsewhere.headers["X-Other"] == "kept"


def test_higher_priority_jobs_overtake_a_backlog_already_in_hand(
    fetcher: Fetcher, origin: Origin
) -> None:
    """40 low jobs of one host at 4/s; once the daemon works through them, 5 high ones come:
    they go within the next few requests, not after the 40."""
    fetcher.set(host_rate=4)
    submit_jobs(fetcher, *({"url": origin.url(f"ok/low{n}")} for n in range(40)))
    daemon = fetcher.start("--drain")
    assert wait_until(lambda: origin.stats.requests[origin.host()] >= 5, timeout=20)
    submit_jobs(fetcher, *({"url": origin.url(f"ok/high{n}"), "priority": 100} for n in range(5)))
    submitted_at = origin.stats.requests[origin.host()]
    assert daemon.wait(60) == 0
    order = [path for _, host, path in origin.stats.sequence if host == origin.host()]
    high = [i for i, path in enumerate(order) if "high" in path]
    assert len(order) == 45 and len(high) == 5
    assert max(high) < submitted_at + 15, (submitted_at, high)  # the low ones in hand, at most
    assert max(high) < order.index("/ok/low39")


@pytest.mark.parametrize("retry", [False, True])
def test_a_post_that_got_an_answer_is_sent_once_unless_it_asks_for_retries(
    fetcher: Fetcher, origin: Origin, retry: bool
) -> None:
    fetcher.set(max_attempts=3)
    submit_jobs(fetcher, {"url": origin.url("status/503/p"), "method": "POST", "retry": retry})
    fetcher.drain()
    assert len(received(origin, "/status/503/p")) == (3 if retry else 1)
    [result] = fetcher.results()
    assert result["state"] == "failed"
    assert result["error"] == (
        "gave up after 3 attempts: HTTP 503" if retry else "POST not retried: HTTP 503"
    )


def test_not_before_holds_a_job_and_a_restart_does_not_lose_it(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A job due in 3 s: a daemon that runs and stops before then sends nothing; the next one
    sends it, not before its time."""
    due = time.time() + 3
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(due)) + f".{int(due % 1 * 1e6):06d}Z"
    submit_jobs(fetcher, {"url": origin.url("ok/later"), "not_before": when})
    assert fetcher.status()["retrying"] == 1
    daemon = fetcher.start()
    time.sleep(1)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0
    assert received(origin, "/ok/later") == []
    fetcher.drain()
    assert len(received(origin, "/ok/later")) == 1
    [(at, _, _)] = [s for s in origin.stats.sequence if s[2] == "/ok/later"]
    assert time.time() - (time.monotonic() - at) >= due - 0.05


def test_a_job_s_own_timeout_and_attempts_apply(fetcher: Fetcher, origin: Origin) -> None:
    submit_jobs(fetcher, {"url": origin.url("slow/3000/t"), "timeout": 0.5, "max_attempts": 1})
    started = time.monotonic()
    fetcher.drain()
    assert time.monotonic() - started < 3
    [result] = fetcher.results()
    assert result["state"] == "failed" and "within 0.5s" in result["error"]


def test_cancel_ends_waiting_jobs_at_once_and_a_running_one_after_its_request(
    fetcher: Fetcher, origin: Origin
) -> None:
    """A queued and a retrying job cancelled send nothing and end `cancelled`; a running one
    is not retried after its current request; a job already done stays done; `status` and
    the results know it."""
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    _, ids = submit_jobs(
        fetcher,
        {"url": origin.url("ok/queued")},
        {"url": origin.url("ok/waiting"), "not_before": later},
        {"url": origin.url("late/1500/503/running")},
    )
    queued, waiting, running = (ids[n]["id"] for n in (1, 2, 3))
    cancelled = fetcher.cli("cancel", str(queued), str(waiting))
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.splitlines() == [f"{queued}: cancelled", f"{waiting}: cancelled"]
    daemon = fetcher.start("--drain")
    assert wait_until(lambda: received(origin, "/late/1500/503/running") != [], timeout=20)
    during = fetcher.cli("cancel", str(running), "999999")
    assert during.returncode == 1
    assert f"{running}: cancelling" in during.stdout and "999999: unknown" in during.stdout
    assert daemon.wait(60) == 0
    assert len(received(origin, "/late/1500/503/running")) == 1
    assert received(origin, "/ok/queued") == received(origin, "/ok/waiting") == []
    status = fetcher.status()
    assert (status["cancelled"], status["queued"], status["retrying"]) == (3, 0, 0)
    states = {r["id"]: (r["state"], r["error"]) for r in fetcher.results()}
    assert states == {job: ("cancelled", "cancelled") for job in (queued, waiting, running)}
    again = fetcher.cli("cancel", str(queued))
    assert again.returncode == 1 and "already cancelled" in again.stdout


def test_results_name_the_job_its_method_and_metadata(fetcher: Fetcher, origin: Origin) -> None:
    _, ids = submit_jobs(
        fetcher,
        {"url": origin.url("ok/m1"), "metadata": {"order": 1, "tags": ["a"]}},
        {"url": origin.url("ok/m2"), "method": "DELETE"},
    )
    fetcher.drain()
    one = fetcher.cli("results", "--id", str(ids[1]["id"]))
    [row] = [json.loads(line) for line in one.stdout.splitlines()]
    assert (row["id"], row["job_id"], row["method"]) == (ids[1]["id"], ids[1]["id"], "GET")
    assert row["metadata"] == {"order": 1, "tags": ["a"]}
    [other] = [r for r in fetcher.results() if r["id"] == ids[2]["id"]]
    assert (other["method"], other["metadata"]) == ("DELETE", None)
    missing = fetcher.cli("results", "--id", "424242")
    assert missing.returncode == 1 and missing.stdout == ""


def test_a_secret_header_value_is_never_shown(fetcher: Fetcher, origin: Origin) -> None:
    """Authorization, Cookie and X-Api-Key values: in no log line (at debug), no output of any
    command, no public table or view; only where the sender reads them."""
    fetcher.set(log_level="debug", max_attempts=2)
    headers = {"Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}",
               "X-Api-Key": SECRET}  # fmt: skip
    outputs = [
        submit_jobs(
            fetcher,
            {"url": origin.url("ok/s1"), "headers": headers},
            {"url": origin.url("status/503/s2"), "method": "POST", "headers": headers},
            {"url": origin.url("redirect/2/s3"), "headers": headers, "metadata": {"m": 1}},
            {"url": origin.url("ok/s4"), "headers": {**headers, "Bad Name": SECRET}},
        )[0]
    ]
    drained = fetcher.drain()
    assert [r.headers["Authorization"] for r in received(origin, "/ok/s1")] == [f"Bearer {SECRET}"]
    for command in (
        ("status", "--json"), ("stats", "--json"), ("results",), ("config", "--json"),
        ("results", "--id", "1"), ("cancel", "1"), ("stats",), ("status",),
    ):  # fmt: skip
        outputs.append(fetcher.cli(*command))
    shown = "".join(out.stdout + out.stderr for out in outputs) + drained.stdout + drained.stderr
    assert events(drained.stderr) and SECRET not in shown
    public = ["jobs", "results", "host_minutes", "host_stats", "host_stats_minutely", "queue",
              "robots"]  # fmt: skip
    for table in public:
        assert SECRET not in repr(fetcher.sql(f"SELECT * FROM {table}")), table
    assert SECRET in repr(fetcher.sql("SELECT headers FROM job_requests"))
