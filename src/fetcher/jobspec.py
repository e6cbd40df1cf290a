"""A job object (a JSON Lines line of `fetcher submit`, an item of `POST /v1/jobs`) checked and
read into a `JobRequest`; a bad one is refused with the reason, naming the field.

    {"url": "https://api.example.com/v1/things", "method": "POST",
     "headers": {"Authorization": "Bearer …", "Content-Type": "application/json"},
     "body": "{\\"name\\": \\"x\\"}", "priority": 10, "not_before": "2026-12-05T08:00:00Z",
     "max_attempts": 2, "timeout": 10, "retry": false, "metadata": {"batch": 7},
     "every": "6h", "adaptive": true, "min_every": "1h", "max_every": "1d", "notify": "changed"}

Only `url` is required. Written by hand rather than with a schema library: a bulk submit reads
a million of them, and each microsecond here is a second there.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fetcher.errors import InvalidJob, InvalidURL
from fetcher.model import METHODS, JobRequest, Recurrence
from fetcher.urls import parse_url

__all__ = [
    "FIELDS", "PLAIN", "JobDefaults", "JobLimits", "duration", "read_headers", "read_job",
]  # fmt: skip

FIELDS = frozenset({
    "url", "method", "headers", "body", "body_base64", "priority", "not_before", "max_attempts",
    "timeout", "retry", "metadata", "webhook", "every", "adaptive", "min_every", "max_every",
    "notify",
})  # fmt: skip
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_METADATA_BYTES = 4096
MAX_HEADERS = 100
PRIORITY_RANGE = (-1000, 1000)
# set by fetcher or by the connection itself, never by a job (RFC 9110 7.6.1: hop-by-hop)
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "proxy-connection", "te", "trailer", "upgrade",
})  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.1: a field name is a token
_BAD_VALUE = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class JobLimits:
    """The global values a job's own may not pass."""

    max_attempts: int
    timeout_s: float
    max_request_body: int
    webhooks: bool = False  # a secret is set (FETCHER_WEBHOOK_SECRET): jobs may name a webhook
    min_interval: float = 60.0  # the shortest `every` (FETCHER_MIN_INTERVAL)


@dataclass(frozen=True, slots=True)
class JobDefaults:
    """What a field left out takes (`fetcher submit --method … --header …`)."""

    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    priority: int = 0
    metadata: str | None = None
    every: float | None = None  # `--every 6h` (seconds, checked): the jobs recur


PLAIN = JobDefaults()  # a plain GET


def read_job(obj: Any, limits: JobLimits, defaults: JobDefaults = PLAIN) -> JobRequest:
    """`obj` (a parsed JSON value) as a job; `InvalidJob` with the reason otherwise."""
    if not isinstance(obj, dict):
        raise InvalidJob("a job is a JSON object with at least a url")
    if not FIELDS.issuperset(obj):
        raise InvalidJob(f"unknown field {sorted(obj.keys() - FIELDS)[0]!r}")
    url = obj.get("url")
    if not isinstance(url, str):
        raise InvalidJob("url: a string is required")
    try:
        target = parse_url(url)
    except InvalidURL as exc:
        raise InvalidJob(f"url: {exc.reason}") from None
    get = obj.get  # a field left out costs a lookup, not a call (a million objects…)
    method = defaults.method if (m := get("method")) is None else _method(m)
    return JobRequest(
        target,
        method,
        defaults.headers if (h := get("headers")) is None else _headers(h),
        _body(obj, limits.max_request_body) if "body" in obj or "body_base64" in obj else None,
        defaults.priority if "priority" not in obj else _integer(obj, "priority", *PRIORITY_RANGE),
        None if (t := get("not_before")) is None else _time(t),
        None
        if "max_attempts" not in obj
        else _integer(obj, "max_attempts", 1, limits.max_attempts),
        None if (s := get("timeout")) is None else _timeout(s, limits.timeout_s),
        False if (r := get("retry")) is None else _flag(r),
        defaults.metadata if "metadata" not in obj else _metadata(obj["metadata"]),
        None if (w := get("webhook")) is None else _webhook(w, limits.webhooks),
        _recurrence(obj, defaults.every, limits.min_interval),
        False if (n := get("notify")) is None else _notify(n),
    )


def _method(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in METHODS:
        shown = value if isinstance(value, str) else type(value).__name__
        raise InvalidJob(f"method: fetcher does not send {str(shown)[:20]!r}")
    return value.upper()


def read_headers(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Header lines as given (`--header`), checked as a job's `headers` are."""
    return _headers(dict(pairs))


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """Names that are tokens and not hop-by-hop, string values without CR, LF or NUL. A bad
    value is never shown: it may be a secret."""
    if not isinstance(value, dict):
        raise InvalidJob("headers: an object of name → string value")
    if len(value) > MAX_HEADERS:
        raise InvalidJob(f"headers: more than {MAX_HEADERS}")
    headers = []
    for name, text in value.items():
        if not _TOKEN.fullmatch(name):
            raise InvalidJob(f"headers: {name[:40]!r} is not a header name")
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidJob(f"headers: {name} is set by fetcher, not by a job")
        if not isinstance(text, str):
            raise InvalidJob(f"headers: the value of {name} is not a string")
        if _BAD_VALUE.search(text):
            raise InvalidJob(f"headers: the value of {name} holds CR, LF or NUL")
        headers.append((name, text))
    return tuple(headers)


def _body(obj: Mapping[str, Any], most: int) -> bytes | None:
    if "body" in obj and "body_base64" in obj:
        raise InvalidJob("body and body_base64: one or the other")
    if "body" in obj:
        if not isinstance(obj["body"], str):
            raise InvalidJob("body: text (binary goes as body_base64)")
        body = obj["body"].encode("utf-8", "surrogatepass")
    elif "body_base64" in obj:
        try:
            body = base64.b64decode(obj["body_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidJob("body_base64: not base64") from None
    else:
        return None
    if len(body) > most:
        raise InvalidJob(f"body: {len(body)} bytes, more than FETCHER_MAX_REQUEST_BODY ({most})")
    return body


def _integer(obj: Mapping[str, Any], name: str, low: int, high: int) -> Any:
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJob(f"{name}: a whole number from {low} to {high}")
    return value


def _timeout(value: object, most: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
        raise InvalidJob(f"timeout: seconds, more than 0 and at most FETCHER_TIMEOUT ({most:g})")
    return float(value)


def _time(value: object) -> float:
    """An RFC 3339 time (with its offset) as unix time."""
    try:
        when = datetime.datetime.fromisoformat(str(value)) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidJob("not_before: an RFC 3339 time with its offset (2026-12-05T08:00:00Z)")
    return when.timestamp()


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidJob("retry: true or false")
    return value


def _webhook(value: object, signed: bool) -> str:
    if not signed:
        raise InvalidJob("webhook: FETCHER_WEBHOOK_SECRET is not set, and webhooks are signed")
    if not isinstance(value, str):
        raise InvalidJob("webhook: an http(s) URL")
    try:
        return parse_url(value).url
    except InvalidURL as exc:
        raise InvalidJob(f"webhook: {exc.reason}") from None


def duration(value: object, name: str) -> float:
    """Seconds: a number, or text as `90s`, `30m`, `6h`, `1d` (a bare number is seconds)."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    ):
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidJob(f"{name}: seconds, or a duration as 90s, 30m, 6h, 1d")
    return float(match[1]) * _UNITS[match[2]]


def _recurrence(obj: Mapping[str, Any], every: object, least: float) -> Recurrence | None:
    every = obj.get("every", every)
    adaptive = obj.get("adaptive", False)
    if every is None:
        if adaptive or "min_every" in obj or "max_every" in obj:
            raise InvalidJob("adaptive, min_every, max_every: only with every")
        return None
    if not isinstance(adaptive, bool):
        raise InvalidJob("adaptive: true or false")
    seconds = duration(every, "every")
    if seconds < least:
        raise InvalidJob(f"every: at least FETCHER_MIN_INTERVAL ({least:g} s)")
    if not adaptive:
        if "min_every" in obj or "max_every" in obj:
            raise InvalidJob("min_every, max_every: only with adaptive")
        return Recurrence(seconds)
    low = (
        duration(obj["min_every"], "min_every") if "min_every" in obj else max(least, seconds / 10)
    )
    high = duration(obj["max_every"], "max_every") if "max_every" in obj else seconds * 10
    if not least <= low <= seconds <= high:
        raise InvalidJob(f"min_every ≤ every ≤ max_every, and min_every at least {least:g} s")
    return Recurrence(seconds, True, low, high)


def _notify(value: object) -> bool:
    if value not in ("all", "changed"):
        raise InvalidJob('notify: "all" or "changed"')
    return value == "changed"


def _metadata(value: object) -> str | None:
    if value is None:
        return None  # the same as left out
    if not isinstance(value, dict):
        raise InvalidJob("metadata: a JSON object")
    text = orjson.dumps(value).decode()
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise InvalidJob(f"metadata: more than {MAX_METADATA_BYTES} bytes as JSON")
    return text
