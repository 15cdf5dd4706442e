"""The retry loop's hold, without Kafka: batches wait in due order whatever their offsets, the
fetch stops at `max_held` batches in a partition or `max_held_bytes` in all and goes on at
half, and a revoked partition's batches are dropped (the next owner reads them again)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition

from mailsluice.contracts.webhook_records import PendingBatch, encode_batch
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.webhooks.consuming import Ticket
from mailsluice.webhooks.courier import Courier
from mailsluice.webhooks.retries import RetryLoop
from mailsluice.webhooks.settings import WebhooksSettings

TP0 = TopicPartition("mailsluice.webhooks.retry.30s", 0)
TP1 = TopicPartition("mailsluice.webhooks.retry.30s", 1)


def record(offset: int, due: float, body: str = "{}") -> Any:
    batch = PendingBatch(
        id=f"msg_{offset}", tenant="a", endpoint="m", events=1, body=body, not_before=due
    )
    return SimpleNamespace(offset=offset, value=encode_batch(batch))


def loop(**settings: Any) -> RetryLoop:
    return RetryLoop(
        KafkaSettings(), WebhooksSettings(**settings), cast(Courier, None), wall=lambda: 0.0
    )


def test_batches_wait_in_due_order_whatever_their_offsets() -> None:
    held = loop()
    for offset, due in ((0, 60.0), (1, 5.0), (2, 30.0)):
        held.ledger.add(TP0, offset)
        held.take(Ticket(TP0, offset, 0), record(offset, due))
    order = [entry[3].id for entry in sorted(held._heap)]
    assert order == ["msg_1", "msg_2", "msg_0"]
    assert held.waiting() == 3


def test_the_fetch_stops_at_the_count_or_byte_bound_and_goes_on_at_half() -> None:
    held = loop(max_held=4, max_held_bytes=1024 * 1024)
    for offset in range(4):
        held.take(Ticket(TP0, offset, 0), record(offset, 1.0))
    assert held.over_limit() and not held.under_limit()
    held._hold(TP0, -2, -4)
    assert held.under_limit()
    big = loop(max_held=100, max_held_bytes=1024 * 1024)
    big.take(Ticket(TP1, 0, 0), record(0, 1.0, body="x" * (1024 * 1024)))
    assert big.over_limit()


async def test_a_revoked_partitions_batches_are_dropped() -> None:
    held = loop()
    held.ledger.add(TP0, 0)
    held.take(Ticket(TP0, 0, 0), record(0, 1.0))
    held.ledger.add(TP1, 0)
    held.take(Ticket(TP1, 0, 0), record(0, 1.0))
    await held.on_revoked([TP0])
    assert [entry[2].tp for entry in held._heap] == [TP1]
    assert held.waiting() == 1
