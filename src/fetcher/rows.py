"""Rows of the read side as every front end shows them (the CLI, the API, webhooks): one
shape whichever backend read them. No imports beyond the standard library: the read commands
load it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from fetcher.secrets import shown_headers

if TYPE_CHECKING:
    from fetcher.jobqueue import JobRow, ResultRow

__all__ = ["glob_to_like", "job_row", "result_row"]


def result_row(row: dict[str, Any]) -> ResultRow:
    """A result as read: its metadata (JSON text in the table) as the object it was."""
    if isinstance(row.get("metadata"), str):
        row["metadata"] = json.loads(row["metadata"])
    if row.get("changed") is not None:
        row["changed"] = bool(row["changed"])
    return cast("ResultRow", row)


def job_row(row: dict[str, Any], latest: ResultRow | None) -> JobRow:
    """A job as read, with its request (a secret header's value as `***`) and its latest
    result."""
    headers = json.loads(row.pop("headers") or "[]")
    row["headers"] = shown_headers(map(tuple, headers))
    row["body_bytes"] = row["body_bytes"] or 0
    row["retry"] = bool(row["retry"])
    row["adaptive"] = bool(row["adaptive"])
    row["notify"] = "changed" if row.pop("notify_changed") else "all"
    if isinstance(row.get("metadata"), str):
        row["metadata"] = json.loads(row["metadata"])
    row["result"] = latest
    return cast("JobRow", row)


def glob_to_like(glob: str) -> str:
    """A host glob (`*` any run, `?` one character) as a LIKE pattern with `\\` as its escape,
    so that both backends filter alike (hosts are kept in lower case)."""
    escaped = glob.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")
