"""A send our own connection rate refused (no connection could be opened) is no attempt: the
message queues again in memory, with no transient-failure event, retry record or attempt count."""

from __future__ import annotations

from typing import Any

from support.delivery_worker import (
    EventLog,
    FakeTransport,
    Running,
    enqueue,
    envelope,
    new_pool,
    service_for,
    setup_pool,
)
from support.metrics import sample

from mailsluice.contracts.envelope import Envelope
from mailsluice.contracts.events import EventType
from mailsluice.delivery.transport.replies import S451_CONNECTION_RATE


async def test_connection_rate_refusal_queues_again_without_an_attempt(kafka: Any) -> None:
    ks = kafka.settings(queue_partitions=1)
    pool = new_pool()
    await setup_pool(ks, pool)
    refusals = {"left": 2}

    async def script(_env: Envelope, _rcpt: str) -> tuple[int, str, str]:
        if refusals["left"] > 0:
            refusals["left"] -= 1
            return S451_CONNECTION_RATE
        return 250, "2.0.0", "ok"

    transport = FakeTransport(script)
    service = service_for(ks, pool, transport)
    async with EventLog(ks, pool) as events, Running(service):
        await enqueue(ks, [envelope(pool, 0, ("x@y.example",))])
        await events.expect(EventType.DELIVERY, 1)
    assert len(transport.calls) == 3  # two refusals, then the delivery
    assert events.of(EventType.TRANSIENT_FAILURE) == []
    assert sample("mailsluice_delivery_connection_rate_requeues_total", pool=pool) == 2
    attempts = "mailsluice_delivery_attempts_total"
    assert sample(attempts, pool=pool, result="delivered") == 1
    assert sample(attempts, pool=pool, result="deferred") == 0
