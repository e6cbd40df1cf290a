"""The daemon with its API on loopback, and a client for it."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from tests.integration.conftest import Fetcher, wait_until

TOKEN = "a-test-token-0123456789"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def start_with_api(fetcher: Fetcher, *, token: str | None = TOKEN, **variables: object) -> Client:
    """A daemon with its API on a free loopback port; the client once /healthz answers."""
    port = free_port()
    fetcher.set(api_addr=f"127.0.0.1:{port}", **variables)
    if token:
        fetcher.set(api_token=token)
    fetcher.start()
    client = Client(port, token)
    fetcher.cleanups.append(client.close)
    if not wait_until(client.healthy, 30, interval=0.1):
        raise AssertionError(f"the API did not come up: {fetcher.last_log()[-3:]}")
    return client


class Client(httpx.Client):
    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        super().__init__(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60)
        self.port = port

    def healthy(self) -> bool:
        try:
            return self.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def jobs(self, *jobs: dict[str, Any], **headers: str) -> dict[str, Any]:
        answer = self.post("/v1/jobs", json={"jobs": list(jobs)}, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def feed(self, after: int = 0, **params: Any) -> dict[str, Any]:
        answer = self.get("/v1/results", params={"after": after, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def follow(self, expected: int, timeout: float, **params: Any) -> list[dict[str, Any]]:
        """The feed from the start until `expected` results were seen (or `timeout`)."""
        seen: list[dict[str, Any]] = []
        after = 0

        def more() -> bool:
            nonlocal after
            page = self.feed(after, wait=1, **params)
            seen.extend(page["results"])
            after = page["next"]
            return len(seen) >= expected

        wait_until(more, timeout, interval=0)
        return seen
