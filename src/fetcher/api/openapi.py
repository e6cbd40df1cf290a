"""The OpenAPI 3.1 description of the API, written by hand beside the routes it describes
(`tests/integration/test_api.py` holds the two together: every route is described, every
description is a route, and the answers have the shapes described)."""

from __future__ import annotations

from typing import Any

from fetcher import __version__

__all__ = ["openapi"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_COMMON = {"401": _problem("no token, or not the API's"), "503": _problem("store unavailable")}
_STATE = {"type": "string", "enum": ["queued", "retrying", "running", "done", "failed",
                                     "cancelled"]}  # fmt: skip

# fmt: off
_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "status", "title"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "integer"},
            "title": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
    "Job": {
        "type": "object",
        "description": "A job as submitted (README, 'Jobs are requests')",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {"type": "string"},
            "method": {
                "type": "string",
                "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            },
            "headers": {
                "oneOf": [
                    {"type": "object", "additionalProperties": {"type": "string"}},
                    {"type": "array", "items": {"type": "array"}},
                ]
            },
            "body": {"type": "string"},
            "body_base64": {"type": "string"},
            "priority": {"type": "integer"},
            "not_before": {"type": "string", "format": "date-time"},
            "max_attempts": {"type": "integer", "minimum": 1},
            "timeout": {"type": "number"},
            "retry": {"type": "boolean"},
            "metadata": {"type": ["object", "null"]},
            "webhook": {"type": "string"},
            "every": {"type": ["number", "string"], "description": "seconds, or 30m, 6h, 1d"},
            "adaptive": {"type": "boolean"},
            "min_every": {"type": ["number", "string"]},
            "max_every": {"type": ["number", "string"]},
            "notify": {"type": "string", "enum": ["all", "changed"]},
        },
    },
    "Submitted": {
        "type": "object",
        "required": ["jobs", "accepted", "duplicates", "rejected"],
        "properties": {
            "jobs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "description": '{"id", "state"} new; {"id", "duplicate": true}; {"error"}',
                    "properties": {
                        "id": {"type": "integer"},
                        "state": {"type": "string", "enum": ["queued", "retrying"]},
                        "duplicate": {"type": "boolean"},
                        "error": {"type": "string"},
                    },
                },
            },
            "accepted": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "rejected": {"type": "integer"},
        },
    },
    "Result": {
        "type": "object",
        "required": [
            "id",
            "job_id",
            "run",
            "cursor",
            "url",
            "method",
            "host",
            "state",
            "bytes",
            "attempts",
            "finished_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "job_id": {"type": "integer"},
            "run": {"type": "integer"},
            "cursor": {"type": "integer"},
            "url": {"type": "string"},
            "method": {"type": "string"},
            "final_url": {"type": ["string", "null"]},
            "host": {"type": "string"},
            "state": {"type": "string", "enum": ["done", "failed", "cancelled"]},
            "status": {"type": ["integer", "null"]},
            "bytes": {"type": "integer"},
            "error": {"type": ["string", "null"]},
            "attempts": {"type": "integer"},
            "latency_ms": {"type": ["number", "null"]},
            "body_sha256": {"type": ["string", "null"]},
            "body_path": {"type": ["string", "null"]},
            "finished_at": {"type": "string", "format": "date-time"},
            "metadata": {"type": ["object", "null"]},
            "changed": {"type": ["boolean", "null"],
                        "description": "against the job's previous run; null unless done"},
        },
    },
    "JobState": {
        "type": "object",
        "required": ["id", "url", "method", "headers", "state", "attempts", "result"],
        "properties": {
            "id": {"type": "integer"},
            "url": {"type": "string"},
            "method": {"type": "string"},
            "host": {"type": "string"},
            "headers": {"type": "object", "description": "a secret header's value as ***"},
            "body_bytes": {"type": "integer"},
            "priority": {"type": "integer"},
            "max_attempts": {"type": ["integer", "null"]},
            "timeout": {"type": ["number", "null"]},
            "retry": {"type": "boolean"},
            "metadata": {"type": ["object", "null"]},
            "webhook": {"type": ["string", "null"]},
            "state": _STATE,
            "attempts": {"type": "integer"},
            "run": {"type": "integer"},
            "every": {"type": ["number", "null"], "description": "seconds between runs"},
            "adaptive": {"type": "boolean"},
            "min_every": {"type": ["number", "null"]},
            "max_every": {"type": ["number", "null"]},
            "notify": {"type": "string", "enum": ["all", "changed"]},
            "next_attempt_at": {"type": ["string", "null"],
                                "description": "a recurring job's next run, when waiting"},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "result": {"oneOf": [_ref("Result"), {"type": "null"}]},
        },
    },
    "Feed": {
        "type": "object",
        "required": ["results", "next"],
        "properties": {
            "results": {"type": "array", "items": _ref("Result")},
            "next": {"type": "integer", "description": "the cursor to ask after next"},
        },
    },
}

# fmt: on


# fmt: off
_RESULTS_QUERY = [
    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 60}},
    {"name": "state", "in": "query",
     "schema": {"type": "string", "enum": ["done", "failed", "cancelled"]}},
    {"name": "host", "in": "query", "schema": {"type": "string"}, "description": "a glob"},
]
_HOST_SORT = [
    {"name": "host", "in": "query", "schema": {"type": "string"}, "description": "a glob"},
    {"name": "sort", "in": "query", "schema": {"type": "string"}},
]
_PATHS: dict[str, Any] = {
    "/v1/jobs": {"post": {
        "summary": "Submit one job, or {\"jobs\": [...]}",
        "parameters": [{"name": "Idempotency-Key", "in": "header",
                        "schema": {"type": "string", "maxLength": 255}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [_ref("Job"), {"type": "object", "required": ["jobs"], "properties": {
                "jobs": {"type": "array", "items": _ref("Job")}}}]}}}},
        "responses": {"200": _json(_ref("Submitted"), "each input answered, in order"),
                      "400": _problem("not JSON, or not a job or a list of jobs"),
                      "413": _problem("body over FETCHER_API_MAX_BODY"),
                      "415": _problem("not application/json"),
                      "422": _problem("the Idempotency-Key answered another request"),
                      **_COMMON},
    }},
    "/v1/jobs:retry": {"post": {
        "summary": "Re-drive finished jobs as new runs (as fetcher retry)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["state"], "additionalProperties": False,
            "properties": {
                "state": {"type": "string", "enum": ["failed", "cancelled", "done"]},
                "host": {"type": "string", "description": "a glob"},
                "since": {"type": ["number", "string"], "description": "e.g. 1h: finished since"},
                "error": {"type": "string", "description": "the error contains it"},
                "dry_run": {"type": "boolean"}}}}}},
        "responses": {"200": _json({"type": "object", "required": ["count", "dry_run"],
                                    "properties": {"count": {"type": "integer"},
                                                   "dry_run": {"type": "boolean"}}},
                                   "how many were (or would be) queued again"),
                      "400": _problem("a field of the wrong kind"), **_COMMON},
    }},
    "/v1/jobs/{id}": {
        "get": {"summary": "A job, its request and its latest result", "parameters": [_ID],
                "responses": {"200": _json(_ref("JobState"), "the job"),
                              "404": _problem("no such job"), **_COMMON}},
        "delete": {"summary": "Cancel a job", "parameters": [_ID],
                   "responses": {"200": _json(_ref("JobState"), "cancelled, or cancelling"),
                                 "404": _problem("no such job"),
                                 "409": _problem("the job already ended"), **_COMMON}},
    },
    "/v1/jobs/{id}/body": {"get": {
        "summary": "The kept body of the job's latest result", "parameters": [_ID],
        "responses": {"200": {"description": "the body, with the response's Content-Type",
                              "content": {"*/*": {}}},
                      "404": _problem("no result, or no body kept"), **_COMMON},
    }},
    "/v1/results": {"get": {
        "summary": "Finished results in commit order (a long poll with wait)",
        "parameters": _RESULTS_QUERY,
        "responses": {"200": _json(_ref("Feed"), "a page of the feed"),
                      "400": _problem("a parameter out of range"), **_COMMON},
    }},
    "/v1/status": {"get": {
        "summary": "The queue by state (as fetcher status --json)",
        "responses": {"200": _json({"type": "object"}, "the queue"), **_COMMON},
    }},
    "/v1/stats": {"get": {
        "summary": "Per-host counters (as fetcher stats --json)", "parameters": _HOST_SORT,
        "responses": {"200": _json({"type": "array", "items": {"type": "object"}},
                                   "one row per host"),
                      "400": _problem("an unknown sort"), **_COMMON},
    }},
    "/openapi.json": {"get": {
        "summary": "This description",
        "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_COMMON},
    }},
    "/healthz": {"get": {
        "summary": "Whether the daemon runs and its store answers (no token needed)",
        "security": [],
        "responses": {"200": _json({"type": "object"}, '{"ok": true}'),
                      "503": _json({"type": "object"}, '{"ok": false, "reason": ...}')},
    }},
}
# fmt: on


def openapi() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fetcher", "version": __version__,
                 "description": "A rate-limited HTTP fetcher's queue, results and webhooks"},
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _PATHS,
    }  # fmt: skip
