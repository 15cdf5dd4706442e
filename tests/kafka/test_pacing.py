"""A client does not spin while every broker is down: a failed metadata update waits the retry
backoff before the next (kafka/clients.py pace_metadata_updates). Without it a producer holding
a record for a partition without a known leader (as a broker in its controlled shutdown reports
them) tried some 2,000 times a second in the fault run.

The last test stops and restarts the session's broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support.delivery_worker import new_pool, setup_pool

from mailsluice.contracts.topics import queue_topic
from mailsluice.kafka import clients
from mailsluice.kafka.clients import make_producer, pace_metadata_updates


class _Client:
    def __init__(self, answers: list[bool]) -> None:
        self._retry_backoff = 0.25
        self._answers = answers

    async def _metadata_update(self, cluster: Any, topics: Any) -> bool:
        return self._answers.pop(0)


async def test_only_a_failed_update_waits_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr(clients.asyncio, "sleep", sleep)
    client = _Client([True, False, True])
    pace_metadata_updates(client)  # type: ignore[arg-type]
    assert [await client._metadata_update(None, None) for _ in range(3)] == [True, False, True]
    assert slept == [0.25]


@pytest.mark.integration
async def test_a_producer_paces_its_metadata_updates_while_the_broker_is_down(kafka) -> None:
    ks = kafka.settings(request_timeout_ms=30000)
    pool = new_pool()
    await setup_pool(ks, pool)
    producer = make_producer(ks, max_message_size=1 << 20, client_id="pacing")
    await producer.start()
    updates = 0
    paced = producer.client._metadata_update

    async def counted(cluster: Any, topics: Any) -> bool:
        nonlocal updates
        updates += 1
        return bool(await paced(cluster, topics))

    producer.client._metadata_update = counted  # type: ignore[method-assign]
    try:
        await producer.send_and_wait(queue_topic(pool), b"before")
        await asyncio.to_thread(kafka.stop)
        _no_leaders(producer, queue_topic(pool))
        began, updates = time.monotonic(), 0
        pending = asyncio.ensure_future(producer.send_and_wait(queue_topic(pool), b"during"))
        await asyncio.sleep(3.0)  # the outage's length, not a synchronisation
        down_s, during = time.monotonic() - began, updates
        await asyncio.to_thread(kafka.start)
        await asyncio.wait_for(pending, 60)  # the record still goes once the broker is back
    finally:
        await producer.stop()
    backoff_s = producer.client._retry_backoff
    # one update per backoff, twice over for scheduling slack; unpaced it is thousands
    assert 0 < during <= 2 * down_s / backoff_s + 5, f"{during} updates in {down_s:.1f} s"


def _no_leaders(producer: Any, topic: str) -> None:
    """What the client last heard from a broker in its controlled shutdown: the partitions have
    no leader. The sender then asks for metadata until one is known, and every ask fails."""
    partitions = producer.client.cluster._partitions[topic]
    for number, meta in partitions.items():
        partitions[number] = meta._replace(leader=-1)
