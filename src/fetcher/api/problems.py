"""RFC 9457 problem details: every API answer that is not a success."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Problem"]

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An answer with a problem: its status, a short title, and what went wrong."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **more: Any,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.more = more

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        body: dict[str, Any] = {"type": "about:blank", "status": self.status, "title": self.title}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.more)
        kept = {
            **{
                k: v
                for k, v in (headers or {}).items()
                if k.lower() not in ("content-type", "content-length")
            }
        }
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type=PROBLEM_JSON,
            headers={**kept, **self.headers},
        )
