"""Jobs for the tests: a URL (and any field of a job) as the queue takes it."""

from __future__ import annotations

from typing import Any

from fetcher.model import JobRequest
from fetcher.urls import parse_url


def job_for(url: str, **fields: Any) -> JobRequest:
    return JobRequest(parse_url(url), **fields)
