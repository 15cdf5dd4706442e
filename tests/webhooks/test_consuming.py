"""Records finish by ticket: a batch that finishes after its partition was revoked and assigned
again must not finish the same offset read the second time (it would be committed before its
own batch is sent, and lost in a crash)."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from mailsluice.kafka.settings import KafkaSettings
from mailsluice.webhooks.consuming import LedgerConsumer, Ticket

TP = TopicPartition("mailsluice.events", 0)


class Recorder(LedgerConsumer):
    def take(self, ticket: Ticket, record: Any) -> None:
        pass

    def work(self) -> int:
        return self.ledger.in_flight()


async def test_a_finish_from_before_a_revocation_does_not_count_after_it() -> None:
    lc = Recorder(KafkaSettings(), ["t"], group="g", stall_s=60, client_id="c")
    lc.ledger.add(TP, 5)
    old = Ticket(TP, 5, 0)
    await lc.on_revoked([TP])  # no consumer: nothing to commit
    lc.ledger.add(TP, 5)  # the partition came back: offset 5 read again
    new = Ticket(TP, 5, 1)
    assert not lc.current(old) and lc.current(new)
    lc.finish(old)
    assert lc.ledger.partition(TP).is_pending(5)
    lc.finish(new)
    assert not lc.ledger.partition(TP).is_pending(5)
    assert lc.ledger.to_commit() == {TP: 6}
