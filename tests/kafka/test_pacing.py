"""A client does not spin while every broker is down: a failed metadata update waits the retry
backoff before the next (kafka/clients.py pace_metadata_updates). Without it a producer holding
a record for a partition without a known leader (as a broker in its controlled shutdown reports
them) tried some 2,000 times a second in the fault run.

The last test stops and restarts the session's broker."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from support.delivery_worker import new_pool, setup_pool
from support.eventually import eventually

from mailsluice.contracts.topics import queue_topic
from mailsluice.kafka import clients
from mailsluice.kafka.clients import make_producer, pace_metadata_updates

UPDATES = 10  # metadata updates watched while the broker is down


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
    began: list[float] = []  # when each metadata update started
    paced = producer.client._metadata_update

    async def counted(cluster: Any, topics: Any) -> bool:
        began.append(time.monotonic())
        return bool(await paced(cluster, topics))

    producer.client._metadata_update = counted  # type: ignore[method-assign]
    try:
        await producer.send_and_wait(queue_topic(pool), b"before")
        await asyncio.to_thread(kafka.stop)
        _no_leaders(producer, queue_topic(pool))
        began.clear()
        pending = asyncio.ensure_future(producer.send_and_wait(queue_topic(pool), b"during"))
        await eventually(lambda: len(began) > UPDATES, within=30, what=f"{UPDATES} updates")
        during = began[: UPDATES + 1]
        await asyncio.to_thread(kafka.start)
        await asyncio.wait_for(pending, 60)  # the record still goes once the broker is back
    finally:
        await producer.stop()
    backoff_s = producer.client._retry_backoff
    # every failed update waits the backoff before the next starts; unpaced, they came some
    # tenths of a millisecond apart
    gaps = [later - earlier for earlier, later in itertools.pairwise(during)]
    assert min(gaps) >= 0.9 * backoff_s, f"updates {min(gaps) * 1000:.2f} ms apart"


def _no_leaders(producer: Any, topic: str) -> None:
    """What the client last heard from a broker in its controlled shutdown: the partitions have
    no leader. The sender then asks for metadata until one is known, and every ask fails."""
    partitions = producer.client.cluster._partitions[topic]
    for number, meta in partitions.items():
        partitions[number] = meta._replace(leader=-1)
