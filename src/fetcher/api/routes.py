"""The API's routes: each a few lines over the queue (writes) and the read side (reads), the
same calls and the same rows as the commands' (`fetcher submit`, `cancel`, `results`, `status`,
`stats`), so the CLI and the API answer alike."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from fetcher import stats
from fetcher.api.feed import FeedWatch
from fetcher.api.openapi import openapi
from fetcher.api.problems import Problem
from fetcher.api.reads import ReadSide
from fetcher.archive import read_body
from fetcher.errors import IdempotencyKeyReused, InvalidJob
from fetcher.jobqueue import JobQueue, Once, QueueReader, Redrive
from fetcher.jobspec import JobLimits, duration, read_job
from fetcher.log import get_logger
from fetcher.model import FINAL_STATES, JobRequest, Submitted
from fetcher.supervisor import StoreHealth

__all__ = ["ROUTES", "Api"]

_log = get_logger("fetcher.api")
_MAX_KEY = 255  # characters of an Idempotency-Key
_MAX_LIMIT = 1000  # results a feed page holds at most
_MAX_WAIT_S = 60.0  # a long poll's longest wait
_HEALTH_READ_S = 2.0
# (method, path, handler): what openapi.py describes, route for route
ROUTES = [
    ("POST", "/v1/jobs", "submit"),
    ("GET", r"/v1/jobs/{id:\d+}", "job"),
    ("DELETE", r"/v1/jobs/{id:\d+}", "cancel"),
    ("GET", r"/v1/jobs/{id:\d+}/body", "body"),
    ("POST", "/v1/jobs:retry", "redrive"),
    ("GET", "/v1/results", "results"),
    ("GET", "/v1/status", "status"),
    ("GET", "/v1/stats", "stats"),
    ("GET", "/openapi.json", "openapi"),
    ("GET", "/healthz", "healthz"),
]


class Api:
    """The handlers, over `queue` (writes: the daemon's own connection to the store) and
    `reads` (reads: connections of their own). `told`: called when jobs ended here (a cancel:
    the feed and the webhooks look now); `submitted`: when jobs were queued (the feeder looks
    now)."""

    def __init__(
        self,
        queue: JobQueue,
        reads: ReadSide,
        *,
        limits: JobLimits,
        health: StoreHealth,
        bodies: Path | None,
        submitted: Callable[[], None],
        told: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._reads = reads
        self._limits = limits
        self._health = health
        self._bodies = bodies
        self._submitted = submitted
        self._told = told
        self.feed = FeedWatch()
        self._watching: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Hear of results other daemons commit (PostgreSQL's NOTIFY)."""
        self._watching = asyncio.create_task(
            self._queue.watch_results(self.feed.wake), name="api feed watch"
        )

    def wake(self) -> None:
        self.feed.wake()

    async def close(self) -> None:
        self.feed.close()
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        await self._reads.close()

    def routes(self) -> list[web.RouteDef]:
        return [web.route(method, path, getattr(self, name)) for method, path, name in ROUTES]

    # -- jobs --------------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        """One job object, or {"jobs": [...]}: each input answered in order."""
        if request.content_type != "application/json" and not request.content_type.endswith(
            "+json"
        ):
            raise Problem(415, "Unsupported Media Type", "send the jobs as application/json")
        raw = await request.read()
        items = _items(raw)
        jobs: list[JobRequest] = []
        answers: list[dict[str, Any] | int] = []  # an int: the index of the job in `jobs`
        for item in items:
            try:
                job = read_job(item, self._limits)
            except InvalidJob as exc:
                answers.append({"error": exc.reason})
                continue
            answers.append(len(jobs))
            jobs.append(job)
        now = time.time()

        def answer(submitted: list[Submitted]) -> str:
            return _answer(answers, jobs, submitted, now).decode()

        key = request.headers.get("Idempotency-Key")
        headers = {}
        if key is None:
            text = answer(await self._queue.submit(jobs) if jobs else [])
        else:
            if not key or len(key) > _MAX_KEY:
                raise Problem(400, "Bad Request", f"Idempotency-Key: 1 to {_MAX_KEY} characters")
            once = Once(key, hashlib.sha256(raw).hexdigest(), answer)
            try:
                text, replayed = await self._queue.submit_once(jobs, once)
            except IdempotencyKeyReused:
                raise Problem(
                    422, "Unprocessable Content",
                    "this Idempotency-Key was used for another request in the last 24 h",
                ) from None  # fmt: skip
            headers["Idempotent-Replayed"] = "true" if replayed else "false"
        if jobs:
            self._submitted()
        return web.Response(body=text.encode(), content_type="application/json", headers=headers)

    async def job(self, request: web.Request) -> web.Response:
        job_id = int(request.match_info["id"])
        row = await self._reads.call(lambda r: r.job(job_id))
        if row is None:
            raise Problem(404, "Not Found", f"no job {job_id}")
        return _json(row)

    async def cancel(self, request: web.Request) -> web.Response:
        """A queued or retrying job ends `cancelled` now; a running one after its request."""
        job_id = int(request.match_info["id"])
        was = (await self._queue.cancel([job_id])).get(job_id)
        if was is None:
            raise Problem(404, "Not Found", f"no job {job_id}")
        if was in FINAL_STATES:
            raise Problem(409, "Conflict", f"job {job_id} already ended {was.value}")
        self._told()
        row = await self._reads.call(lambda r: r.job(job_id))
        return _json(row)

    async def redrive(self, request: web.Request) -> web.Response:
        """Finished jobs queued again as new runs, as `fetcher retry` does: the count."""
        doc = _object(await request.read())
        unknown = doc.keys() - {"state", "host", "since", "error", "dry_run"}
        if unknown:
            raise Problem(400, "Bad Request", f"unknown field {sorted(unknown)[0]!r}")
        state, host, since, error = (doc.get(k) for k in ("state", "host", "since", "error"))
        dry_run = doc.get("dry_run", False)
        if state not in FINAL_STATES:
            raise Problem(400, "Bad Request", "state: failed, cancelled or done")
        if not all(v is None or isinstance(v, str) for v in (host, error)):
            raise Problem(400, "Bad Request", "host, error: strings")
        if not isinstance(dry_run, bool):
            raise Problem(400, "Bad Request", "dry_run: true or false")
        try:
            after = None if since is None else time.time() - duration(since, "since")
        except InvalidJob as exc:
            raise Problem(400, "Bad Request", exc.reason) from None
        which = Redrive(state, host, after, error)
        count = await self._queue.redrive(which, dry_run=dry_run)
        if count and not dry_run:
            self._submitted()
        return _json({"count": count, "dry_run": dry_run})

    async def body(self, request: web.Request) -> web.StreamResponse:
        """The kept body of the job's latest result, with the response's Content-Type."""
        job_id = int(request.match_info["id"])
        found = await self._reads.call(lambda r: r.body(job_id))
        if found is None:
            raise Problem(404, "Not Found", f"job {job_id} has no result")
        path, content_type = found
        if path is None or self._bodies is None:
            raise Problem(404, "Not Found", f"job {job_id} kept no body")
        data = await asyncio.to_thread(read_body, self._bodies, path)
        if data is None:
            raise Problem(404, "Not Found", f"the body of job {job_id} is gone")
        content_type = content_type or "application/octet-stream"
        return web.Response(body=data, headers={"Content-Type": content_type})

    # -- results, status, stats ----------------------------------------------------------------

    async def results(self, request: web.Request) -> web.Response:
        """Results in commit order after `after`; with `wait`, a long poll."""
        query = request.query
        after = _number(query, "after", 0, 0, 2**62)
        limit = _number(query, "limit", 100, 1, _MAX_LIMIT)
        wait_s = _number(query, "wait", 0.0, 0.0, _MAX_WAIT_S)
        state = query.get("state") or None
        if state is not None and state not in FINAL_STATES:
            raise Problem(400, "Bad Request", "state: done, failed or cancelled")
        host = query.get("host") or None

        def read(reader: QueueReader) -> Any:
            return reader.feed(int(after), int(limit), state, host)

        rows = await self.feed.poll(lambda: self._reads.call(read), wait_s)
        return _json({"results": rows, "next": rows[-1]["cursor"] if rows else int(after)})

    async def status(self, request: web.Request) -> web.Response:
        return _json(await self._reads.call(stats.status))

    async def stats(self, request: web.Request) -> web.Response:
        host = request.query.get("host") or None
        sort = request.query.get("sort") or "requests"
        try:
            rows = await self._reads.call(lambda r: stats.host_stats(r, host=host, sort=sort))
        except ValueError as exc:  # an unknown sort
            raise Problem(400, "Bad Request", f"sort: {exc}") from None
        return _json(rows)

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi())

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the store answers (a read within two seconds, and no operation of the
        daemon failing on it), 503 otherwise."""
        down: Exception | None = self._health.down
        if down is None:
            try:
                async with asyncio.timeout(_HEALTH_READ_S):
                    await self._reads.call(lambda r: r.queue_counts())
            except Exception as exc:  # whatever it was, the store did not answer
                down = exc
        if down is not None:
            return _json({"ok": False, "reason": str(down)}, status=503)
        return _json({"ok": True})


def _items(raw: bytes) -> Sequence[Any]:
    """The job objects of a body: one, or {"jobs": [...]}; 400 for any other shape."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Bad Request", f"not JSON: {exc}") from None
    if isinstance(doc, dict) and "jobs" in doc and "url" not in doc:
        if len(doc) != 1 or not isinstance(doc["jobs"], list):
            raise Problem(400, "Bad Request", '{"jobs": [...]} holds a list of jobs, and only it')
        return doc["jobs"]
    if isinstance(doc, dict):
        return [doc]
    raise Problem(400, "Bad Request", 'a job object, or {"jobs": [...]}')


def _object(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "Bad Request", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Problem(400, "Bad Request", "a JSON object")
    return doc


def _answer(
    answers: list[dict[str, Any] | int],
    jobs: list[JobRequest],
    submitted: list[Submitted],
    now: float,
) -> bytes:
    """Each input's answer in order, and the counts."""
    shown: list[dict[str, Any]] = []
    for answer in answers:
        if not isinstance(answer, int):
            shown.append(answer)
            continue
        job_id, duplicate = submitted[answer]
        if duplicate:
            shown.append({"id": job_id, "duplicate": True})
        else:
            later = (jobs[answer].not_before or 0.0) > now
            shown.append({"id": job_id, "state": "retrying" if later else "queued"})
    duplicates = sum(1 for s in submitted if s.duplicate)
    return orjson.dumps({
        "jobs": shown,
        "accepted": len(submitted) - duplicates,
        "duplicates": duplicates,
        "rejected": len(answers) - len(submitted),
    })  # fmt: skip


def _number(query: Any, name: str, default: float, low: float, high: float) -> float:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = type(default)(raw)
    except ValueError:
        raise Problem(400, "Bad Request", f"{name}: a number") from None
    if not low <= value <= high:
        raise Problem(400, "Bad Request", f"{name}: from {low:g} to {high:g}")
    return value


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
