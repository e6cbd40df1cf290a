"""Webhooks against the real daemon and a real receiver on loopback: signed (checked here by
hand, not with the library that signs), the same id on every try, delivered after a restart,
never holding up fetching, stopped by a 410, refused by the SSRF guard."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import time
from typing import Any

import pytest

from fetcher.demo import Origin
from tests.integration.api import free_port, start_with_api
from tests.integration.conftest import Fetcher, wait_until
from tests.receiver import Received, receiver

SECRET = "whsec_" + base64.b64encode(b"fetcher-test-webhook-secret-32by").decode()


def verified(request: Received) -> dict[str, Any]:
    """The event, once its Standard Webhooks signature checks out by hand: HMAC-SHA256 over
    `id.timestamp.body` with the secret's bytes, base64, after `v1,`."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    assert abs(int(timestamp) - time.time()) < 300
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + request.body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert expected in headers["webhook-signature"].split(" ")
    return json.loads(request.body)  # type: ignore[no-any-return]


def deliveries(fetcher: Fetcher, state: str) -> list[dict[str, Any]]:
    result = fetcher.cli("webhooks", "--state", state, "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_an_event_is_signed_and_tried_again_with_the_same_id(
    fetcher: Fetcher, origin: Origin
) -> None:
    with receiver(statuses=[500]) as rx:
        api = start_with_api(fetcher, webhook_secret=SECRET)
        job = {"url": origin.url("/ok/hooked"), "webhook": rx.url, "metadata": {"order": 7}}
        job_id = api.jobs(job)["jobs"][0]["id"]
        assert wait_until(lambda: len(rx.got()) >= 2, 30)
        first, second = rx.got()[:2]
        events = [verified(first), verified(second)]
        assert (
            first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_job{job_id}_run1"
        )
        assert first.body == second.body  # the same event, byte for byte
        event = events[0]
        assert (event["type"], event["data"]["id"], event["data"]["state"]) == (
            "job.finished", job_id, "done",
        )  # fmt: skip
        assert event["data"]["metadata"] == {"order": 7}
        assert event["timestamp"] == event["data"]["finished_at"]
        assert wait_until(lambda: deliveries(fetcher, "delivered") != [], 10)
        (row,) = deliveries(fetcher, "delivered")
        assert (row["attempts"], row["last_status"]) == (2, 204)
        assert len(rx.got()) == 2  # delivered: not again


@pytest.mark.sqlite_only
def test_the_default_webhook_is_told_of_every_job(fetcher: Fetcher, origin: Origin) -> None:
    with receiver() as rx:
        fetcher.set(webhook_secret=SECRET, webhook_url=rx.url, max_attempts=1)
        fetcher.submit([origin.url("/ok/a"), origin.url("/reset/b")])
        fetcher.start()
        assert wait_until(lambda: len(rx.got()) == 2, 30)
        states = sorted(verified(r)["data"]["state"] for r in rx.got())
    assert states == ["done", "failed"]


def test_a_receiver_down_across_a_restart_gets_the_event_after_it(
    fetcher: Fetcher, origin: Origin
) -> None:
    host, port = "127.0.0.21", free_port("127.0.0.21")
    hook = f"http://{host}:{port}/hook"
    api = start_with_api(fetcher, webhook_secret=SECRET)
    api.jobs({"url": origin.url("/ok/while-down"), "webhook": hook})
    assert wait_until(lambda: any(d["attempts"] >= 2 for d in deliveries(fetcher, "pending")), 30)
    (pending,) = deliveries(fetcher, "pending")
    assert "refused" in pending["last_error"].lower() or "connect" in pending["last_error"].lower()
    daemon = fetcher._procs[-1]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    with receiver(host, port) as rx:
        start_with_api(fetcher, webhook_secret=SECRET)
        assert wait_until(lambda: len(rx.got()) == 1, 30)
        assert verified(rx.got()[0])["data"]["url"] == origin.url("/ok/while-down")
        assert wait_until(lambda: len(deliveries(fetcher, "delivered")) == 1, 10)


def test_a_hanging_receiver_does_not_hold_up_fetching(fetcher: Fetcher, origin: Origin) -> None:
    """Every delivery hangs till the daemon's timeout (30 s): the jobs are all fetched
    meanwhile, and no more than 16 deliveries are under way at once."""
    with receiver(hang=True) as rx:
        api = start_with_api(fetcher, webhook_secret=SECRET)
        jobs = [{"url": origin.url(f"/ok/{i}", i % 6), "webhook": rx.url} for i in range(300)]
        started = time.monotonic()
        assert api.jobs(*jobs)["accepted"] == 300
        assert wait_until(lambda: api.get("/v1/status").json()["done"] == 300, 25)
        assert time.monotonic() - started < 25
        assert wait_until(lambda: len(rx.got()) == 16, 10)
        time.sleep(1.0)
        assert len(rx.got()) == 16  # the 16 hang; no more are sent meanwhile
        assert deliveries(fetcher, "delivered") == []


def test_a_410_stops_deliveries_to_that_url(fetcher: Fetcher, origin: Origin) -> None:
    with receiver(statuses=[410]) as rx:
        api = start_with_api(fetcher, webhook_secret=SECRET)
        api.jobs({"url": origin.url("/ok/first"), "webhook": rx.url})
        assert wait_until(lambda: len(deliveries(fetcher, "failed")) == 1, 30)
        api.jobs({"url": origin.url("/ok/second"), "webhook": rx.url})
        assert wait_until(lambda: len(deliveries(fetcher, "failed")) == 2, 30)
        assert len(rx.got()) == 1  # the second was never sent
    assert {d["last_error"] for d in deliveries(fetcher, "failed")} >= {"410 Gone"}


@pytest.mark.sqlite_only
def test_a_webhook_to_a_private_address_is_refused_by_the_guard(
    fetcher: Fetcher, origin: Origin
) -> None:
    with receiver() as rx:
        api = start_with_api(fetcher, webhook_secret=SECRET, allow_private="false")
        api.jobs({"url": origin.url("/ok/x"), "webhook": rx.url})
        assert wait_until(lambda: len(deliveries(fetcher, "failed")) == 1, 30)
        (failed,) = deliveries(fetcher, "failed")
        assert "blocked destination" in failed["last_error"]
        assert rx.got() == []


def test_a_webhook_without_a_secret_is_refused_at_submission(
    fetcher: Fetcher, origin: Origin
) -> None:
    api = start_with_api(fetcher)
    answer = api.jobs({"url": origin.url("/ok/x"), "webhook": "http://127.0.0.1:9/hook"})
    assert answer["jobs"] == [
        {"error": "webhook: FETCHER_WEBHOOK_SECRET is not set, and webhooks are signed"}
    ]
    fetcher.set(webhook_url="http://127.0.0.1:9/hook")
    result = fetcher.cli("submit", origin.url("/ok/y"))
    assert result.returncode == 78 and "FETCHER_WEBHOOK_SECRET" in result.stderr
