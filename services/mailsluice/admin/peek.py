"""`mailsluice peek`: print the newest records of a queue or the events topic as JSON lines.

For people looking at the pipeline: it reads without a consumer group, so it never moves a
worker's offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.topics import DEFAULT_POOL, EVENTS_TOPIC, queue_topic
from mailsluice.kafka.admin import topic_partitions
from mailsluice.kafka.clients import make_consumer
from mailsluice.kafka.settings import KafkaSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pool", default=DEFAULT_POOL, help="queue of this pool")
    which.add_argument("--events", action="store_true", help="the events topic instead")
    which.add_argument("--topic", help="any topic by name")
    parser.add_argument("-n", "--count", type=int, default=10, help="records per partition")


def describe(record: Any, *, events: bool) -> dict[str, Any]:
    """One record as a JSON-able dict: envelope plus message summary, or the event."""
    base = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
    if events:
        return {**base, **json.loads(record.value)}
    try:
        env = envelope_from_headers(record.headers).model_dump()
    except ValueError as exc:
        env = {"error": str(exc)}
    value: bytes = record.value or b""
    subject = next(
        (
            line.split(b":", 1)[1].strip().decode(errors="replace")
            for line in value.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line.lower().startswith(b"subject:")
        ),
        "",
    )
    return {**base, "envelope": env, "size": len(value), "subject": subject}


async def peek(settings: KafkaSettings, topic: str, count: int, *, events: bool) -> int:
    consumer = make_consumer(settings, group_id=None, client_id="mailsluice-peek")
    await consumer.start()
    try:
        parts = await topic_partitions(settings, topic)
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        begins = await consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(begins[tp], ends[tp] - count))
        pending = {tp for tp in parts if ends[tp] > begins[tp]}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=2000)
            if not batch:
                break
            for tp, records in batch.items():
                for record in records:
                    print(json.dumps(describe(record, events=events), default=str))
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return 0
    finally:
        await consumer.stop()


def run(args: argparse.Namespace) -> int:
    topic = args.topic or (EVENTS_TOPIC if args.events else queue_topic(args.pool))
    settings = load(KafkaSettings)
    try:
        return asyncio.run(peek(settings, topic, args.count, events=args.events))
    except (KafkaError, OSError) as exc:  # OSError covers TimeoutError
        print(f"mailsluice peek: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
