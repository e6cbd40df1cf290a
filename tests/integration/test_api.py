"""The HTTP API against the real daemon on loopback: every route and its errors, the token,
Idempotency-Key, the results feed (long poll; exact across three daemons on PostgreSQL), the
secrets it never shows, and clients that misbehave."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from typing import Any

import httpx
import jsonschema
import pytest

from fetcher.api.openapi import openapi
from fetcher.demo import Origin
from tests.integration.api import Client, start_with_api
from tests.integration.conftest import Fetcher, wait_until

SPEC = openapi()


def conforms(answer: httpx.Response, schema: str) -> Any:
    """The answer's JSON, checked against a schema of the OpenAPI description."""
    body = answer.json()
    jsonschema.validate(
        body, {"$ref": f"#/components/schemas/{schema}", "components": SPEC["components"]}
    )
    return body


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    return conforms(answer, "Problem")  # type: ignore[no-any-return]


def test_every_route_answers_and_each_error_is_a_problem(fetcher: Fetcher, origin: Origin) -> None:
    api = start_with_api(fetcher, api_max_body=4096)
    page, reset = origin.url("/ok/page"), origin.url("/reset/x", 1)

    # the token: 401 with a challenge without it or with another; /healthz is open
    with Client(api.port, token=None) as anonymous, Client(api.port, "not-it") as wrong:
        for client in (anonymous, wrong):
            answer = client.get("/v1/status")
            problem(answer, 401)
            assert answer.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/healthz").json() == {"ok": True}

    # POST /v1/jobs: per input, in order; 400, 413, 415
    answer = api.post("/v1/jobs", json={"jobs": [{"url": page}, {"url": "ftp://x"}, {"url": page}]})
    submitted = conforms(answer, "Submitted")
    job_id = submitted["jobs"][0]["id"]
    assert submitted["jobs"] == [
        {"id": job_id, "state": "queued"},
        {"error": "url: scheme must be http or https (got 'ftp')"},
        {"id": job_id, "duplicate": True},
    ]
    assert (submitted["accepted"], submitted["duplicates"], submitted["rejected"]) == (1, 1, 1)
    one = api.post("/v1/jobs", json={"url": reset, "max_attempts": 1})
    reset_id = conforms(one, "Submitted")["jobs"][0]["id"]
    later = api.post(
        "/v1/jobs", json={"url": origin.url("/ok/later"), "not_before": "2999-01-01T00:00:00Z"}
    )
    later_id = later.json()["jobs"][0]["id"]
    assert later.json()["jobs"][0]["state"] == "retrying"
    problem(
        api.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
    )
    problem(api.post("/v1/jobs", json=[{"url": page}]), 400)
    problem(api.post("/v1/jobs", json={"jobs": {"url": page}}), 400)
    problem(api.post("/v1/jobs", content=b"url=x", headers={"Content-Type": "text/plain"}), 415)
    too_big = api.post("/v1/jobs", json={"url": page, "metadata": {"x": "y" * 5000}})
    assert "FETCHER_API_MAX_BODY" in str(SPEC["paths"]["/v1/jobs"]["post"]["responses"]["413"])
    problem(too_big, 413)

    # GET /v1/results: the two finished jobs, in commit order, with their cursors
    seen = api.follow(2, 30)
    assert sorted(r["id"] for r in seen) == sorted([job_id, reset_id])
    assert [r["cursor"] for r in seen] == sorted(r["cursor"] for r in seen)
    feed = conforms(api.get("/v1/results", params={"after": 0, "limit": 1}), "Feed")
    assert len(feed["results"]) == 1 and feed["next"] == feed["results"][0]["cursor"]
    failed = api.get("/v1/results", params={"state": "failed"}).json()["results"]
    assert [r["id"] for r in failed] == [reset_id]
    problem(api.get("/v1/results", params={"limit": 0}), 400)
    problem(api.get("/v1/results", params={"wait": "soon"}), 400)
    problem(api.get("/v1/results", params={"state": "queued"}), 400)

    # GET /v1/jobs/{id}, its body; 404s
    job = conforms(api.get(f"/v1/jobs/{job_id}"), "JobState")
    assert (job["state"], job["result"]["status"], job["url"]) == ("done", 200, page)
    body = api.get(f"/v1/jobs/{job_id}/body")
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/plain")
    assert body.content.startswith(b"fetcher demo origin.")
    problem(api.get(f"/v1/jobs/{reset_id}/body"), 404)  # no response, no body
    problem(api.get(f"/v1/jobs/{later_id}/body"), 404)  # no result yet
    problem(api.get("/v1/jobs/999999"), 404)
    problem(api.get("/v1/jobs/999999/body"), 404)
    problem(api.get("/v1/jobs/abc"), 404)

    # DELETE /v1/jobs/{id}: 200 with the job, 409 once final, 404 unknown
    cancelled = conforms(api.delete(f"/v1/jobs/{later_id}"), "JobState")
    assert (cancelled["state"], cancelled["result"]["state"]) == ("cancelled", "cancelled")
    assert "already ended done" in problem(api.delete(f"/v1/jobs/{job_id}"), 409)["detail"]
    problem(api.delete(f"/v1/jobs/{later_id}"), 409)
    problem(api.delete("/v1/jobs/999999"), 404)

    # status and stats, as the commands print them
    status = api.get("/v1/status").json()
    assert (status["done"], status["failed"], status["cancelled"]) == (1, 1, 1)
    assert status == {**fetcher.status(), "requests_per_s": status["requests_per_s"],
                      "oldest_queued_s": status["oldest_queued_s"]}  # fmt: skip
    stats = api.get("/v1/stats", params={"host": "127.0.0.*", "sort": "host"}).json()
    assert [row["host"] for row in stats] == sorted(fetcher.stats())
    problem(api.get("/v1/stats", params={"sort": "nope"}), 400)
    problem(api.get("/v1/nothing"), 404)
    problem(api.put("/v1/status"), 405)
    assert api.get("/openapi.json").json()["openapi"].startswith("3.")


def test_the_openapi_description_is_the_routes() -> None:
    """Every route is described, with its methods, and every description is a route."""
    from fetcher.api.routes import ROUTES, Api

    routes = {(method.lower(), path.replace(r"{id:\d+}", "{id}")) for method, path, _ in ROUTES}
    assert all(callable(getattr(Api, name)) for _, _, name in ROUTES)
    described = {(method, path) for path, item in SPEC["paths"].items() for method in item}
    assert routes == described
    jsonschema.Draft202012Validator.check_schema({"components": SPEC["components"]})


def test_an_idempotency_key_replays_the_first_answer(fetcher: Fetcher, origin: Origin) -> None:
    api = start_with_api(fetcher)
    batch = {"jobs": [{"url": origin.url(f"/ok/{i}")} for i in range(5)]}
    first = api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": "order-42"})
    again = api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and first.json()["accepted"] == 5
    assert (first.headers["idempotent-replayed"], again.headers["idempotent-replayed"]) == (
        "false", "true",
    )  # fmt: skip
    other = api.post(
        "/v1/jobs", json={"url": origin.url("/ok/x")}, headers={"Idempotency-Key": "order-42"}
    )
    problem(other, 422)
    problem(api.post("/v1/jobs", json=batch, headers={"Idempotency-Key": "k" * 256}), 400)
    wait_until(lambda: fetcher.status()["done"] == 5, 30)
    assert sum(fetcher.status()[s] for s in ("queued", "running", "done")) == 5


def test_a_secret_header_value_never_appears_in_an_answer(fetcher: Fetcher, origin: Origin) -> None:
    api = start_with_api(fetcher)
    secrets = ("s3cr3t-bearer", "s3cr3t-key", "s3cr3t-cookie")
    job = {
        "url": origin.url("/ok/private"),
        "headers": {"Authorization": f"Bearer {secrets[0]}", "X-Api-Key": secrets[1],
                    "Cookie": f"session={secrets[2]}", "Accept": "text/plain"},
    }  # fmt: skip
    answers = [api.post("/v1/jobs", json=job)]
    job_id = answers[0].json()["jobs"][0]["id"]
    answers.append(api.post("/v1/jobs", json={**job, "url": origin.url("/late/2000/200/x")}))
    wait_until(lambda: api.get(f"/v1/jobs/{job_id}").json()["state"] == "done", 30)
    answers += [api.get(f"/v1/jobs/{job_id}"), api.get("/v1/results"), api.get("/v1/status")]
    answers.append(api.delete(f"/v1/jobs/{answers[1].json()['jobs'][0]['id']}"))
    shown = api.get(f"/v1/jobs/{job_id}").json()["headers"]
    assert shown == {
        "Authorization": "***",
        "X-Api-Key": "***",
        "Cookie": "***",
        "Accept": "text/plain",
    }
    for answer in answers:
        assert not any(secret in answer.text for secret in secrets), answer.text
    received = [r for r in origin.stats.received if r.path.endswith("/ok/private")]
    assert received and received[0].headers["X-Api-Key"] == secrets[1]  # sent, never shown


def test_a_long_poll_answers_as_soon_as_a_result_commits(fetcher: Fetcher, origin: Origin) -> None:
    api = start_with_api(fetcher)
    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(api.feed(0, wait=30)), daemon=True)
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)
    assert waiting.is_alive()  # nothing to answer with yet: it waits
    job_id = api.jobs({"url": origin.url("/ok/now")})["jobs"][0]["id"]
    waiting.join(40)
    took = time.monotonic() - started
    assert [r["id"] for r in answers[0]["results"]] == [job_id]
    assert took < 15, took  # the commit woke it, long before its 30 s were over


@pytest.mark.sqlite_only
def test_a_store_that_is_away_is_a_503_to_try_again(fetcher: Fetcher, origin: Origin) -> None:
    """Another process holds the write lock past the busy timeout: a submit answers 503 with
    Retry-After (the daemon does not wait for the store on the client's time), /healthz says
    so, and both come back when the lock goes."""
    api = start_with_api(fetcher, db_busy_timeout=1)
    blocker = sqlite3.connect(fetcher.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        answer = api.post("/v1/jobs", json={"url": origin.url("/ok/blocked")})
        assert problem(answer, 503)["title"] == "Store unavailable"
        assert answer.headers["retry-after"] == "5"
        assert wait_until(lambda: api.get("/healthz").status_code == 503, 30)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_until(lambda: api.get("/healthz").status_code == 200, 30)
    assert api.post("/v1/jobs", json={"url": origin.url("/ok/blocked")}).status_code == 200


@pytest.mark.sqlite_only
def test_half_requests_hold_up_neither_fetching_nor_the_api(
    fetcher: Fetcher, origin: Origin
) -> None:
    """300 clients each send half a request and stop: jobs are fetched all the while,
    /healthz answers, and the half requests are closed after the idle timeout (15 s)."""
    api = start_with_api(fetcher)
    held = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=5)
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n")
            held.append(sock)
        urls = [origin.url(f"/ok/{i}", i % 4) for i in range(200)]
        fetcher.submit(urls)
        assert wait_until(lambda: fetcher.status()["done"] == 200, 60)
        assert api.get("/healthz").json() == {"ok": True}
        assert api.jobs({"url": origin.url("/ok/via-api")})["accepted"] == 1
        closed = 0
        for sock in held:
            sock.settimeout(30)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == 300
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("backend", ["postgres"])
def test_the_feed_across_three_daemons_sees_every_result_once(
    fetcher: Fetcher, origin: Origin
) -> None:
    """Three daemons commit at once on one PostgreSQL queue while a client follows the feed
    through another daemon's API: every result once, in cursor order, none missed."""
    apis = [start_with_api(fetcher, max_concurrency=8)]
    for _ in range(2):
        apis.append(start_with_api(fetcher, max_concurrency=8))
    total = 1500
    jobs = [{"url": origin.url(f"/late/{i % 7}/200/{i}", i % 12)} for i in range(total)]
    for start in range(0, total, 500):
        assert apis[0].jobs(*jobs[start : start + 500])["accepted"] == 500
    seen = apis[2].follow(total, 120, limit=37)
    ids = [r["id"] for r in seen]
    assert len(ids) == total and len(set(ids)) == total
    cursors = [r["cursor"] for r in seen]
    assert cursors == sorted(cursors) and len(set(cursors)) == total
    for proc in fetcher._procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    done = [
        next(e["done"] for e in fetcher.log_of(i) if e["event"] == "service.stopped")
        for i in range(3)
    ]
    assert sum(done) == total and min(done) > 0, done  # all three committed results


def test_an_api_on_an_address_that_is_not_loopback_needs_a_token(fetcher: Fetcher) -> None:
    fetcher.set(api_addr="0.0.0.0:8080")
    result = fetcher.cli("run", "--drain")
    assert result.returncode == 78
    assert "FETCHER_API_ADDR" in result.stderr and "FETCHER_API_TOKEN" in result.stderr
