"""Webhooks: the outbox delivered, at least once, signed as Standard Webhooks sign.

An event is written in the transaction that commits the result it tells of (`batch.write`), so
none is lost and none is told of a result that did not commit. Any daemon on the queue delivers
it: `WebhookSender` claims due deliveries under a lease, POSTs each through the SSRF guard on a
transport of its own (a slow or hanging receiver holds none of the fetchers' connections or
slots), and settles them: a 2xx is delivered; a 410 ends every delivery to that URL; anything
else is tried again with the jobs' backoff until `FETCHER_WEBHOOK_RETRY_FOR` has passed since
the event. A daemon that dies mid-delivery leaves a lease that runs out: another sends it again
(the receiver tells the repeat by its `webhook-id`, the same on every try).

    body:    {"type": "job.finished", "timestamp": <the result's finished_at>, "data": RESULT}
    headers: webhook-id (msg_job<id>_run<run>), webhook-timestamp (unix seconds of this try),
             webhook-signature ("v1," + base64 HMAC-SHA256 of "id.timestamp.body")
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from fetcher.errors import Refused, StoreUnavailable
from fetcher.fetch import reason_of
from fetcher.guarded import GuardedQueue
from fetcher.jobqueue import Delivery, ResultRow, Settled
from fetcher.log import get_logger
from fetcher.policy import backoff_delay
from fetcher.supervisor import wait_set
from fetcher.transport import Request, Transport

__all__ = ["WebhookSender", "event_body"]

_log = get_logger("fetcher.webhooks")
_IDLE_POLL_S = 1.0  # how often an idle sender looks for due deliveries (others' events too)
_SETTLE_EVERY_S = 0.2
_EVENTS = {
    "delivered": "webhook.delivered",
    "pending": "webhook.retry",
    "failed": "webhook.given_up",
}
_ANSWER_BYTES = 4096  # of a receiver's answer, read and dropped: the connection is kept


def event_body(result: ResultRow) -> bytes:
    """The event's body: the same bytes on every try (its signature covers them)."""
    return orjson.dumps(
        {"type": "job.finished", "timestamp": result["finished_at"], "data": result}
    )


class WebhookSender:
    """The task that delivers the outbox, `max_in_flight` deliveries at a time."""

    def __init__(
        self,
        queue: GuardedQueue,
        transport: Transport,
        *,
        secret: str,
        user_agent: str,
        timeout_s: float,
        backoff: tuple[float, float],
        retry_for_s: float,
        wall: Callable[[], float],
        max_in_flight: int = 16,
    ) -> None:
        self._queue = queue
        self._transport = transport
        self._signer = Webhook(secret)
        self._user_agent = user_agent
        self._timeout_s = timeout_s
        self._backoff_base, self._backoff_max = backoff
        self._retry_for_s = retry_for_s
        self._wall = wall
        self._max_in_flight = max_in_flight
        self._lease_s = timeout_s + 60.0  # a lease outlives the try it covers
        self._sending: set[asyncio.Task[None]] = set()
        self._settled: list[Settled] = []
        self._due = asyncio.Event()
        self._soonest = math.inf  # the earliest retry this daemon settled (unix time)

    def wake(self) -> None:
        """Results with webhooks may have committed: look now, not at the next poll."""
        self._due.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set; tries still under way then are dropped (their
        leases run out and they are sent again), what was settled is written."""
        try:
            while not stopping.is_set():
                with contextlib.suppress(StoreUnavailable):  # only once stopping
                    await self._turn()
                await wait_set(self._due, self._pause())
                self._due.clear()
        finally:
            for task in self._sending:
                task.cancel()
            await asyncio.gather(*self._sending, return_exceptions=True)
            if self._settled:
                with contextlib.suppress(Exception):  # the store away: the leases run out
                    await self._queue.until(stopping).settle_webhooks(self._settled)
            await self._transport.aclose()

    def _pause(self) -> float:
        """Till the next look: soon while tries are under way, at a retry this daemon set
        up, and each second besides (other daemons' events, retries of the dead)."""
        if self._sending or self._settled:
            return _SETTLE_EVERY_S
        until_retry = self._soonest - self._wall()
        if until_retry <= 0:
            self._soonest = math.inf
        return max(0.0, min(_IDLE_POLL_S, until_retry))

    async def _turn(self) -> None:
        """Claim what is due, as far as there are free places; write what was settled."""
        free = self._max_in_flight - len(self._sending)
        if free > 0:
            for delivery in await self._queue.claim_webhooks(free, self._lease_s):
                self._spawn(delivery)
        if self._settled:
            settled, self._settled = self._settled, []
            try:
                await self._queue.settle_webhooks(settled)
            except BaseException:
                self._settled[:0] = settled
                raise

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._deliver(delivery), name=f"webhook {delivery.id}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            settled = await self._try(delivery)
        except Exception as exc:  # a bug: logged, and the delivery tried again later
            _log.error("webhook.failed_to_send", webhook_id=delivery.event_id, exc_info=exc)
            settled = self._again(delivery, None, f"internal error: {exc!r}")
        self._settled.append(settled)
        if len(self._settled) >= self._max_in_flight or settled.state != "pending":
            self._due.set()
        if settled.next_attempt_at is not None:
            self._soonest = min(self._soonest, settled.next_attempt_at)
        log = _log.info if settled.state == "delivered" else _log.warning
        log(
            _EVENTS[settled.state],
            webhook_id=delivery.event_id,
            url=delivery.url,
            attempt=delivery.attempts + 1,
            status=settled.status,
            error=settled.error,
        )

    async def _try(self, delivery: Delivery) -> Settled:
        if delivery.result is None:
            return Settled(delivery.id, delivery.url, "failed", None, "its result was pruned")
        body = event_body(delivery.result)
        now = datetime.now(UTC)
        headers = [
            ("Content-Type", "application/json"),
            ("User-Agent", self._user_agent),
            ("webhook-id", delivery.event_id),
            ("webhook-timestamp", str(int(now.timestamp()))),
            ("webhook-signature", self._signer.sign(delivery.event_id, now, body)),
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._transport.send(Request("POST", delivery.url, headers, body))
                try:
                    await _read_some(response.aiter_raw())
                finally:
                    await response.aclose()
        except Refused as exc:  # a blocked destination: no try will reach it
            return Settled(delivery.id, delivery.url, "failed", None, exc.reason)
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g}s"
            return self._again(delivery, None, error)
        except (httpx.HTTPError, aiohttp.ClientError, OSError, ValueError) as exc:
            return self._again(delivery, None, reason_of(exc))
        status = response.status_code
        if 200 <= status < 300:
            return Settled(delivery.id, delivery.url, "delivered", status, None)
        if status == 410:
            return Settled(delivery.id, delivery.url, "failed", status, "410 Gone", gone=True)
        return self._again(delivery, status, f"the receiver answered {status}")

    def _again(self, delivery: Delivery, status: int | None, error: str) -> Settled:
        """Due again after the backoff, or given up once FETCHER_WEBHOOK_RETRY_FOR is over."""
        delay = backoff_delay(
            delivery.attempts + 1, base_s=self._backoff_base, max_s=self._backoff_max
        )
        at = self._wall() + delay
        if at > delivery.created_at + self._retry_for_s:
            error = f"{error}; given up after {delivery.attempts + 1} tries"
            return Settled(delivery.id, delivery.url, "failed", status, error)
        return Settled(delivery.id, delivery.url, "pending", status, error, next_attempt_at=at)


async def _read_some(chunks: AsyncIterator[bytes]) -> None:
    read = 0
    async for chunk in chunks:
        read += len(chunk)
        if read >= _ANSWER_BYTES:
            return
