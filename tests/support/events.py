"""Writing events to mailsluice.events from a test, as the services do (acks=all)."""

from __future__ import annotations

from collections.abc import Iterable

from mailsluice.contracts.events import Event, encode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings


async def publish_events(
    kafka_settings: KafkaSettings, events: Iterable[Event], *, key: bytes | None = None
) -> None:
    """Each event acknowledged in turn, keyed by its queue id (or all by `key`: one
    partition, so they are read in this order)."""
    producer = make_producer(kafka_settings, max_message_size=65536, client_id="test-events")
    await producer.start()
    try:
        for ev in events:
            await producer.send_and_wait(
                EVENTS_TOPIC, key=key or ev.queue_id.encode(), value=encode_event(ev)
            )
    finally:
        await producer.stop()
