"""One attempt of one batch, and the record that follows it, acknowledged by Kafka.

The dispatcher (new batches) and the retry loop (due ones) both hand batches here. The
endpoint is looked up now in the tenants file: a removed endpoint's batch, or one of a paused
endpoint, is dead-lettered unsent. Otherwise the body is signed with every secret of the
endpoint and POSTed; a failure goes to a delay tier or, past the schedule, to the dead-letter
topic, and the endpoint's status changes (status.py). `attempt` returns only once that record
is acknowledged, so the caller may then commit past the batch's sources: nothing is lost when
the process dies at any point (a batch delivered but not yet committed is sent again).

One endpoint must not take every connection slot from the others (a receiver that hangs
holds each POST for the whole timeout): an endpoint has at most `per_endpoint` POSTs under
way, and while it is failing only one, a probe; its other batches go straight back to their
delay tier as failed attempts, untried, until a probe succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

import aiohttp

from mailsluice.contracts.topics import WEBHOOK_STATUS_TOPIC
from mailsluice.contracts.webhook_records import (
    EndpointState,
    EndpointStatus,
    PendingBatch,
    encode_batch,
    encode_status,
)
from mailsluice.kafka.producers import RenewingProducer, Send
from mailsluice.kafka.retrying import until_kafka_answers
from mailsluice.metrics.labels import Stopwatch
from mailsluice.metrics.webhooks import Webhooks as metrics
from mailsluice.tenancy.model import Webhook
from mailsluice.tenancy.registry import Registry
from mailsluice.webhooks.http import post
from mailsluice.webhooks.outcomes import DEAD, Outcome, Result, after_attempt, dead
from mailsluice.webhooks.schedule import RetrySchedule
from mailsluice.webhooks.signing import sign_headers
from mailsluice.webhooks.ssrf import Network
from mailsluice.webhooks.status import EndpointBook

log = logging.getLogger(__name__)

# Wait between attempts to write a batch's follow-up record while Kafka does not answer.
WRITE_RETRY_S = 1.0
WRITE_MAX_RETRY_S = 10.0


class Courier:
    def __init__(
        self,
        registry: Registry,
        book: EndpointBook,
        producer: RenewingProducer,
        session: aiohttp.ClientSession,
        *,
        schedule: RetrySchedule,
        allowed: Sequence[Network],
        timeout_s: float,
        max_in_flight: int,
        per_endpoint: int = 4,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.registry = registry
        self.book = book
        self.producer = producer
        self.session = session
        self.schedule = schedule
        self.allowed = list(allowed)
        self.timeout_s = timeout_s
        self.wall = wall
        self.rand = rand
        self._slots = asyncio.Semaphore(max_in_flight)
        self._per_endpoint = per_endpoint
        self._endpoint_slots: dict[bytes, asyncio.Semaphore] = {}
        self._probing: set[bytes] = set()  # failing endpoints with an attempt under way
        self.untried = 0  # batches sent back to their tier while their endpoint was probed

    def endpoint(self, tenant: str, endpoint: str) -> Webhook | None:
        found = self.registry.get(tenant)
        if found is None:
            return None
        return next((w for w in found.webhooks if w.id == endpoint), None)

    async def attempt(self, batch: PendingBatch) -> None:
        """Send `batch` once (or dead-letter it unsent) and write what follows, retrying the
        write until Kafka acknowledges it (a caller stopping cancels the task: the batch's
        sources stay uncommitted and are read again)."""
        gate = self._endpoint_slots.get(batch.key)
        if gate is None:
            gate = self._endpoint_slots[batch.key] = asyncio.Semaphore(self._per_endpoint)
        async with gate, self._slots:  # the endpoint's own slot first: never wait holding one
            outcome, status = await self._try(batch)
        writes: list[Send] = []
        if outcome.record is not None and outcome.topic is not None:
            rec = outcome.record
            writes.append((outcome.topic, encode_batch(rec), rec.key, ()))
        if status is not None:
            writes.append((WEBHOOK_STATUS_TOPIC, encode_status(status), status.key, ()))
        if writes:
            await self._write(writes)
        metrics.BATCHES.labels(outcome.result).inc()
        metrics.EVENTS.labels(outcome.result).inc(batch.events)
        metrics.PAUSED.set(self.book.paused_count())
        if outcome.result == DEAD and outcome.record is not None:
            log.warning(
                "webhook batch %s of %s/%s dead: %s",
                batch.id,
                batch.tenant,
                batch.endpoint,
                outcome.record.reason,
            )

    async def _try(self, batch: PendingBatch) -> tuple[Outcome, EndpointStatus | None]:
        now = self.wall()
        webhook = self.endpoint(batch.tenant, batch.endpoint)
        if webhook is None:
            return dead(batch, "the endpoint is no longer configured", now), None
        known = self.book.get(batch.tenant, batch.endpoint)
        if known.state is EndpointState.PAUSED:
            return dead(batch, "the endpoint is paused", now), None
        probe = known.state is EndpointState.FAILING
        if probe and batch.key in self._probing:
            self.untried += 1
            untried = Result(False, error=f"{known.last_error} (not tried: endpoint failing)")
            return after_attempt(batch, untried, self.schedule, now, self.rand()), None
        if probe:
            self._probing.add(batch.key)
        try:
            return await self._post(batch, webhook, now)
        finally:
            if probe:
                self._probing.discard(batch.key)

    async def _post(
        self, batch: PendingBatch, webhook: Webhook, now: float
    ) -> tuple[Outcome, EndpointStatus | None]:
        body = batch.body.encode()
        headers = sign_headers(webhook.secrets, batch.id, int(now), body)
        with Stopwatch(metrics.ATTEMPT_SECONDS):
            result = await post(
                self.session,
                webhook.url,
                headers,
                body,
                allowed=self.allowed,
                timeout_s=self.timeout_s,
            )
        done = self.wall()
        outcome = after_attempt(batch, result, self.schedule, done, self.rand())
        return outcome, self._status(batch, result, done)

    def _status(self, batch: PendingBatch, result: Result, now: float) -> EndpointStatus | None:
        if result.ok:
            return self.book.succeeded(batch.tenant, batch.endpoint, now)
        if result.permanent:
            return None  # the URL is wrong, not the receiver: its status says nothing new
        return self.book.failed(batch.tenant, batch.endpoint, result.error, now, gone=result.gone)

    async def _write(self, writes: list[Send]) -> None:
        def failed(exc: Exception) -> None:
            log.warning("webhooks: writing a batch's outcome failed (%s); retrying", exc)

        await until_kafka_answers(
            lambda: self.producer.send_all(writes),
            retry_s=WRITE_RETRY_S,
            max_retry_s=WRITE_MAX_RETRY_S,
            on_failure=failed,
        )
