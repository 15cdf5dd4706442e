"""The outbox: records kept in order in bounded memory and sent until acknowledged, through
failures; a full outbox refuses more; what is unsent at the stop is counted as lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError
from support.eventually import eventually

from mailsluice.kafka.outbox import Outbox
from mailsluice.kafka.producers import RenewingProducer


class Broker:
    """What fake producers write to; `down` makes every send fail."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.down = False
        self.producers = 0
        self.sent = asyncio.Event()


class FakeProducer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        broker.producers += 1

    async def start(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, **_kw: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broker.down:
            future.set_exception(KafkaConnectionError())
        else:
            self.broker.written.append(value)
            self.broker.sent.set()
            future.set_result(None)
        return future

    async def flush(self) -> None:
        return None

    async def stop(self) -> None:
        return None


def outbox(broker: Broker, limit: int = 10, lost: list[int] | None = None) -> Outbox:
    producers = RenewingProducer(lambda: FakeProducer(broker), name="test")  # type: ignore[arg-type,return-value]
    on_lost = lost.append if lost is not None else (lambda _n: None)
    return Outbox(producers, limit=limit, name="test", send_timeout_s=1.0, on_lost=on_lost)


async def test_records_wait_out_an_outage_and_are_written_in_order() -> None:
    broker = Broker()
    box = outbox(broker)
    broker.down = True
    box.start()
    assert all(box.put(("t", f"e{i}".encode(), None, ())) for i in range(3))
    await eventually(lambda: box.failures > 0, within=5, what="a send to meet the outage")
    assert broker.written == [] and box.pending == 3
    broker.down = False
    await box.stop(grace_s=10.0)
    assert broker.written == [b"e0", b"e1", b"e2"]
    assert box.pending == 0
    assert broker.producers >= 2  # the producer that failed was replaced


async def test_a_full_outbox_refuses_and_says_so_before() -> None:
    broker = Broker()
    broker.down = True
    box = outbox(broker, limit=2)
    assert box.put(("t", b"a", None, ())) and box.put(("t", b"b", None, ()))
    assert not box.has_room()
    assert not box.put(("t", b"c", None, ()))
    assert box.pending == 2


async def test_what_is_unsent_at_the_stop_is_counted_as_lost() -> None:
    broker = Broker()
    broker.down = True
    lost: list[int] = []
    box = outbox(broker, lost=lost)
    box.start()
    box.put(("t", b"a", None, ()))
    box.put(("t", b"b", None, ()))
    await box.stop(grace_s=0.2)
    assert lost == [2] and box.pending == 0


@pytest.mark.parametrize("count", [1, 1200])
async def test_everything_put_is_written_once(count: int) -> None:
    broker = Broker()
    box = outbox(broker, limit=2000)
    box.start()
    for i in range(count):
        assert box.put(("t", str(i).encode(), None, ()))
    await box.stop(grace_s=10.0)
    assert broker.written == [str(i).encode() for i in range(count)]
