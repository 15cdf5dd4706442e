"""`mailsluice webhooks` killed (SIGKILL) while batches wait on the delay tiers and events are
unread: a new process sends every event, signed (at least once: a batch sent but not yet
committed when the process died comes again, with the same event ids)."""

from __future__ import annotations

import base64
import signal
import sys
import uuid
from pathlib import Path

import yaml
from aiokafka import AIOKafkaProducer
from support.eventually import eventually
from support.loopback import free_port
from support.processes import get, product_env, start, stop, tails
from support.webhook_receiver import Receiver

from mailsluice.contracts.events import Event, EventType, encode_event
from mailsluice.contracts.topics import EVENTS_TOPIC, webhook_topic_specs
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


async def write(kafka_settings: KafkaSettings, name: str, first: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(first, first + count):
            event = Event(type=EventType.DELIVERY, tenant=name, recipient=f"r{i}@x.test")
            await producer.send_and_wait(EVENTS_TOPIC, encode_event(event), key=f"q{i}".encode())
    finally:
        await producer.stop()


def sender_env(
    kafka_settings: KafkaSettings, tmp_path: Path, name: str, url: str, port: int
) -> dict[str, str]:
    """The environment of a sender with one tenant whose endpoint is `url`, short tiers."""
    tenants = tmp_path / "tenants.yaml"
    webhook = {"id": "main", "url": url, "events": ["delivered"], "secrets": [SECRET]}
    spec = {"pools": ["default"], "domains": ["x.test"], "webhooks": [webhook]}
    tenants.write_text(yaml.safe_dump({"tenants": {name: spec}}))
    return product_env(
        kafka_settings.bootstrap,
        MAILSLUICE_TENANTS_FILE=str(tenants),
        MAILSLUICE_WEBHOOKS_HTTP_PORT=str(port),
        MAILSLUICE_WEBHOOKS_ALLOW_NETWORKS="127.0.0.0/8",
        MAILSLUICE_WEBHOOKS_RETRY_DELAYS_S="0.5,1",
        MAILSLUICE_WEBHOOKS_BATCH_MAX_WAIT_MS="100",
        MAILSLUICE_WEBHOOKS_BATCH_MAX_EVENTS="5",
    )


async def test_a_killed_sender_loses_no_event(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    events = [s for s in standard_topics(kafka_settings, [], 1 << 20) if s.name == EVENTS_TOPIC]
    await ensure_topics(kafka_settings, events + webhook_topic_specs(1))
    rx = await Receiver().start()
    rx.status = 503
    name = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = sender_env(kafka_settings, tmp_path, name, rx.url, port)
    args = [sys.executable, "-m", "mailsluice.cli", "webhooks"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start(args, env, logs[0])
    second = None
    try:
        await eventually(
            lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
            within=60,
            what="the first sender ready",
            blocking=True,
            detail=lambda: tails(logs),
        )
        await write(kafka_settings, name, 0, 30)
        await eventually(lambda: len(rx.received) >= 8, within=30, what="failed attempts")
        stop(first, signal.SIGKILL)
        await write(kafka_settings, name, 30, 10)  # unread by anyone yet
        rx.status = 200
        second = start(args, env, logs[1])
        await eventually(
            lambda: (
                {f"r{i}@x.test" for i in range(40)}
                <= {item["recipient"] for r in rx.delivered() for item in r.batch()["data"]}
            ),
            within=90,
            what="all 40 events delivered",
            detail=lambda: tails(logs),
        )
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
        await rx.stop()
    for got in rx.received:
        got.verify(SECRET)
    ids = rx.event_ids()
    print(f"delivered {len(ids)} event items for 40 events ({len(ids) - len(set(ids))} again)")
