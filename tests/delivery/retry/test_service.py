"""`mailsluice retry-mover` start: it waits for Kafka until stopped."""

from __future__ import annotations

import asyncio

import pytest
from support.eventually import eventually
from support.loopback import free_port

from mailsluice.delivery.retry import service
from mailsluice.delivery.retry.mover import RetryMover
from mailsluice.delivery.retry.settings import RetryMoverSettings
from mailsluice.kafka.settings import KafkaSettings


def unreachable_mover() -> tuple[RetryMover, KafkaSettings]:
    nobody = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    return RetryMover(nobody, settings=RetryMoverSettings(follow_control=False)), nobody


async def test_a_stopped_mover_does_not_try_to_connect() -> None:
    mover, kafka = unreachable_mover()
    mover.stop()
    assert await service._connect(mover, kafka, ensure=True) is False
    assert mover.consumer is None and mover.producer is None


async def test_connect_keeps_trying_while_kafka_is_away_and_ends_on_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mover, kafka = unreachable_mover()
    connecting = asyncio.create_task(service._connect(mover, kafka, ensure=True))

    def failed_once() -> bool:
        assert not connecting.done(), connecting
        return "cannot reach Kafka" in caplog.text

    # polled: one failed attempt is logged
    await eventually(failed_once, within=30, what="a failed attempt logged")
    mover.stop()
    assert await asyncio.wait_for(connecting, 10) is False
    assert mover.consumer is None and mover.producer is None
