"""`mailsluice webhooks dead|status|pause|resume`: what became of webhook batches and endpoints.

`dead` lists the dead-letter topic (batches given up, and why); `status` the endpoints' states
from the compacted status topic; `pause` and `resume` write an admin's status record, which
every running sender follows (a resume starts the failure count over).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.topics import WEBHOOK_DEAD_TOPIC, WEBHOOK_STATUS_TOPIC
from mailsluice.contracts.webhook_records import (
    EndpointState,
    EndpointStatus,
    PendingBatch,
    decode_batch_record,
    encode_status,
)
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import read_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.webhooks.status import EndpointBook, admin_status

EXIT_KAFKA = 1
CLIENT_ID = "mailsluice-webhooks-cli"


def add_actions(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="[ACTION]")
    dead = sub.add_parser("dead", help="list dead-lettered batches (oldest first)")
    status = sub.add_parser("status", help="list endpoint states (active, failing, paused)")
    for action in (dead, status):
        action.add_argument("--tenant", help="only this tenant's")
        action.add_argument("--json", action="store_true", help="print JSON lines")
    actions = [dead, status]
    for name, text in (("pause", "stop sending to an endpoint"), ("resume", "send again")):
        one = sub.add_parser(name, help=text)
        one.add_argument("tenant")
        one.add_argument("endpoint")
        actions.append(one)
    for action in actions:
        action.add_argument("--timeout", type=float, default=30.0, help="seconds for Kafka")


def run(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    actions = {"dead": _dead, "status": _status, "pause": _set_state, "resume": _set_state}
    try:
        return asyncio.run(asyncio.wait_for(actions[args.action](kafka, args), args.timeout))
    except (KafkaError, TimeoutError, OSError) as exc:
        print(f"mailsluice webhooks: Kafka: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_KAFKA


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def dead_line(batch: PendingBatch) -> str:
    return (
        f"{_when(batch.dead_at)}\t{batch.tenant}/{batch.endpoint}\t{batch.id}\t"
        f"{batch.events} events\t{batch.attempts} attempts\t{batch.reason}"
    )


def status_line(status: EndpointStatus) -> str:
    return (
        f"{status.tenant}/{status.endpoint}\t{status.state}\tsince {_when(status.since)}\t"
        f"{status.consecutive_failures} failures\t{status.last_error or '-'}"
    )


def _show(items: list[Any], as_json: bool, line: Any) -> None:
    for item in items:
        print(item.model_dump_json(exclude={"body"}) if as_json else line(item))


async def _dead(kafka: KafkaSettings, args: argparse.Namespace) -> int:
    found: list[PendingBatch] = []

    def apply(_key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            batch = decode_batch_record(value)
        except ValueError:
            return
        if args.tenant is None or batch.tenant == args.tenant:
            found.append(batch)

    await read_topic(kafka, WEBHOOK_DEAD_TOPIC, apply, client_id=CLIENT_ID)
    _show(found, args.json, dead_line)
    return 0


async def read_statuses(kafka: KafkaSettings) -> EndpointBook:
    book = EndpointBook(pause_after_s=float("inf"))
    await read_topic(kafka, WEBHOOK_STATUS_TOPIC, book.apply, client_id=CLIENT_ID)
    return book


async def _status(kafka: KafkaSettings, args: argparse.Namespace) -> int:
    book = await read_statuses(kafka)
    found = [s for s in book.statuses() if args.tenant is None or s.tenant == args.tenant]
    _show(found, args.json, status_line)
    return 0


async def _set_state(kafka: KafkaSettings, args: argparse.Namespace) -> int:
    book = await read_statuses(kafka)
    state = EndpointState.PAUSED if args.action == "pause" else EndpointState.ACTIVE
    new = admin_status(book.get(args.tenant, args.endpoint), state, time.time())
    producer = make_producer(kafka, max_message_size=64 * 1024, client_id=CLIENT_ID)
    await producer.start()
    try:
        await producer.send_and_wait(WEBHOOK_STATUS_TOPIC, encode_status(new), key=new.key)
    finally:
        await producer.stop()
    print(json.dumps({"endpoint": f"{args.tenant}/{args.endpoint}", "state": str(state)}))
    return 0
