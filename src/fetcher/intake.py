"""The rules of a submission, which both backends follow (each brings its SQL): a job's
fingerprint (URL, method, body sha256: the same request already queued, retrying or running is
not queued again), the state it starts in (`retrying` until its `not_before`), which jobs keep a
request row (headers, body: what only the sender reads), and the answer for each job in the
order given: its new id, or the id of the job it repeats.

A chunk's rows carry only the columns some job of it sets; the others take their defaults (a
bulk submit of bare URLs writes (id, url, host) a row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson

from fetcher.model import JobRequest, JobState, Submitted

__all__ = ["COLUMNS", "Key", "SubmissionPlan", "submission_plan"]

Key = tuple[str, str, str]  # (url, method, body sha256): a request's fingerprint
# the columns a submit may write, after (id, url, host), with their defaults
COLUMNS: dict[str, Any] = {
    "method": "GET", "body_sha256": "", "priority": 0, "state": "queued",
    "next_attempt_at": None, "max_attempts": None, "timeout_s": None, "retry": 0,
    "metadata": None, "webhook": None, "every_s": None, "adaptive": 0, "min_every_s": None,
    "max_every_s": None, "notify_changed": 0,
}  # fmt: skip
_NAMES = list(COLUMNS)


@dataclass  # not slots: `keys` is cached on the instance
class SubmissionPlan:
    jobs: Sequence[JobRequest]
    now: float
    requests: list[int] = field(init=False)  # the jobs with headers or a body

    def __post_init__(self) -> None:
        self.requests = [i for i, job in enumerate(self.jobs) if job.headers or job.body]

    @cached_property
    def keys(self) -> list[Key]:
        """Each job's fingerprint (wanted only when a duplicate was met, or a request kept)."""
        return [job.fingerprint for job in self.jobs]

    def by_host(self) -> list[int]:
        """The jobs' indexes, host by host (a stable sort keeps each host's order): the index
        inserts then touch each page once per batch instead of once per URL, and PostgreSQL's
        host rows are locked in order."""
        hosts = [job.target.host_key for job in self.jobs]
        return sorted(range(len(hosts)), key=hosts.__getitem__)

    def table(self, order: Sequence[int], first_id: int) -> tuple[list[str], list[tuple[Any, ...]]]:
        """The columns some job sets (after id, url, host) and the rows of the jobs in `order`,
        numbered from `first_id`."""
        jobs = self.jobs
        if all(job.plain for job in jobs):  # bare URLs: the common case of a bulk submit
            ids = range(first_id, first_id + len(order))
            return [], [
                (job_id, jobs[i].target.url, jobs[i].target.host_key)
                for job_id, i in zip(ids, order, strict=True)
            ]
        # column by column (zip, tuple.count: C loops), not a generator per row and column
        columns = list(zip(*(self._values(jobs[i]) for i in order), strict=True))
        used = [
            n for n, default in enumerate(COLUMNS.values())
            if columns[n].count(default) != len(order)
        ]  # fmt: skip
        targets = [jobs[i].target for i in order]
        rows = list(zip(
            range(first_id, first_id + len(order)), [t.url for t in targets],
            [t.host_key for t in targets], *(columns[n] for n in used), strict=True,
        ))  # fmt: skip
        return [_NAMES[n] for n in used], rows

    def _values(self, job: JobRequest) -> tuple[Any, ...]:
        """A job's values of COLUMNS."""
        if job.plain:
            return _PLAIN
        due = job.not_before is not None and job.not_before > self.now
        return (
            job.method, job.body_sha256, job.priority,
            (JobState.RETRYING if due else JobState.QUEUED).value, job.not_before if due else None,
            job.max_attempts, job.timeout_s, int(job.retry), job.metadata, job.webhook,
            *(_NO_RECURRENCE if (r := job.recurrence) is None else
              (r.every_s, int(r.adaptive), r.min_s, r.max_s)),
            int(job.notify_changed),
        )  # fmt: skip

    def request_rows(self, new: Mapping[Key, int]) -> list[tuple[int, str, bytes | None]]:
        """(job id, headers as JSON, body) of the new jobs that carry a request."""
        rows, seen = [], set()
        for i in self.requests:
            key = self.keys[i]
            if key in new and key not in seen:
                seen.add(key)
                job = self.jobs[i]
                rows.append((new[key], orjson.dumps(job.headers).decode(), job.body))
        return rows

    def numbered(self, order: Sequence[int], first_id: int) -> list[Submitted]:
        """Every job new, numbered from `first_id` in `order`: the answers in the order given."""
        ids = [0] * len(order)
        for n, i in enumerate(order, start=first_id):
            ids[i] = n
        return [Submitted(job_id, False) for job_id in ids]

    def others(self, new: Mapping[Key, int]) -> list[Key]:
        """The fingerprints that were not inserted: duplicates of jobs already there."""
        return sorted({key for key in self.keys if key not in new})

    def answers(self, new: Mapping[Key, int], existing: Mapping[Key, int]) -> list[Submitted]:
        """Each job's answer, in the order given: the first of a fingerprint inserted is new,
        the rest (and those already there) are duplicates."""
        answered: set[Key] = set()
        out = []
        for key in self.keys:
            if key in new and key not in answered:
                answered.add(key)
                out.append(Submitted(new[key], False))
            else:
                out.append(Submitted(new.get(key) or existing[key], True))
        return out


_PLAIN = tuple(COLUMNS.values())
_NO_RECURRENCE = (None, 0, None, None)


def submission_plan(jobs: Sequence[JobRequest], now: float) -> SubmissionPlan:
    return SubmissionPlan(jobs, now)
