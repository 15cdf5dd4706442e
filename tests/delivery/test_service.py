"""`mailsluice delivery` while Kafka does not answer: the process stays up and not ready, keeps
trying, and a stop ends the wait at once."""

from __future__ import annotations

import asyncio
import time

from support.delivery_worker import FakeTransport, service_for
from support.eventually import eventually
from support.loopback import free_port

from mailsluice.kafka.settings import KafkaSettings


async def test_unreachable_kafka_keeps_the_service_not_ready_until_stopped() -> None:
    nobody = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    service = service_for(nobody, "t-unreachable", FakeTransport())
    assert service.ready() == (False, "starting")
    task = asyncio.create_task(service.run())

    def tried() -> bool:
        assert not task.done(), task
        return service.ready()[1] != "starting"

    # polled: the state has no event to wait on
    await eventually(tried, within=30, what="a first attempt to reach Kafka")
    assert service.ready() == (False, "kafka unreachable: KafkaConnectionError")
    assert not task.done()  # retrying, not crashed
    stopped_at = time.monotonic()
    service.stop()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - stopped_at < 1.5  # the wait between attempts ends at stop
    assert service.ready()[0] is False
