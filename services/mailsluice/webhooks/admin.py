"""`mailsluice webhooks dead|redrive|status|pause|resume`: what became of webhook batches and
endpoints.

`dead` lists the dead-letter topic (batches given up, and why); `redrive` puts a tenant's dead
batches dead since a time back on the first delay tier, due now, with a fresh schedule (same
webhook-id and body: receivers that deduplicate see nothing twice); `status` lists the
endpoints' states from the compacted status topic; `pause` and `resume` write an admin's
status record, which every running sender follows (a resume starts the failure count over).
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
from mailsluice.contracts.topics import (
    WEBHOOK_DEAD_TOPIC,
    WEBHOOK_RECORD_BYTES,
    WEBHOOK_RETRY_TIERS,
    WEBHOOK_STATUS_TOPIC,
    webhook_retry_topic,
)
from mailsluice.contracts.webhook_records import (
    EndpointState,
    EndpointStatus,
    PendingBatch,
    decode_batch_record,
    encode_batch,
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
    redrive = sub.add_parser("redrive", help="send a tenant's dead batches again")
    redrive.add_argument("tenant", help="the tenant whose dead batches to send")
    redrive.add_argument("--endpoint", help="only this endpoint's")
    redrive.add_argument(
        "--since", type=float, default=0.0, help="only batches dead since (unix seconds)"
    )
    actions = [dead, status, redrive]
    for name, text in (("pause", "stop sending to an endpoint"), ("resume", "send again")):
        one = sub.add_parser(name, help=text)
        one.add_argument("tenant", help="the endpoint's tenant")
        one.add_argument(
            "endpoint", help="the endpoint's name (`webhooks status` lists TENANT/ENDPOINT)"
        )
        actions.append(one)
    for action in actions:
        action.add_argument("--timeout", type=float, default=30.0, help="seconds for Kafka")


def run(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    actions = {
        "dead": _dead,
        "redrive": _redrive,
        "status": _status,
        "pause": _set_state,
        "resume": _set_state,
    }
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


async def read_dead(kafka: KafkaSettings, tenant: str | None) -> list[PendingBatch]:
    """The dead batches (of `tenant`), oldest first."""
    found: list[PendingBatch] = []

    def apply(_key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return
        try:
            batch = decode_batch_record(value)
        except ValueError:
            return
        if tenant is None or batch.tenant == tenant:
            found.append(batch)

    await read_topic(kafka, WEBHOOK_DEAD_TOPIC, apply, client_id=CLIENT_ID)
    return sorted(found, key=lambda b: b.dead_at)


async def _dead(kafka: KafkaSettings, args: argparse.Namespace) -> int:
    _show(await read_dead(kafka, args.tenant), args.json, dead_line)
    return 0


def redriven(batch: PendingBatch, now: float) -> PendingBatch:
    """A dead batch due again now, with a fresh schedule."""
    return batch.model_copy(
        update={"attempts": 0, "first_attempt": 0.0, "not_before": now, "reason": "", "dead_at": 0}
    )


async def _redrive(kafka: KafkaSettings, args: argparse.Namespace) -> int:
    now = time.time()
    chosen = [
        redriven(b, now)
        for b in await read_dead(kafka, args.tenant)
        if b.dead_at >= args.since and args.endpoint in (None, b.endpoint)
    ]
    topic = webhook_retry_topic(WEBHOOK_RETRY_TIERS[0][0])
    await _send(kafka, [(topic, encode_batch(b), b.key) for b in chosen])
    book = await read_statuses(kafka)
    paused = sorted({b.endpoint for b in chosen if book.paused(b.tenant, b.endpoint)})
    print(json.dumps({"redriven": len(chosen), "paused_endpoints": paused}))
    return 0


async def _send(kafka: KafkaSettings, records: list[tuple[str, bytes, bytes]]) -> None:
    producer = make_producer(kafka, max_message_size=WEBHOOK_RECORD_BYTES, client_id=CLIENT_ID)
    await producer.start()
    try:
        acks = [await producer.send(topic, value, key=key) for topic, value, key in records]
        for ack in acks:
            await ack
    finally:
        await producer.stop()


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
    await _send(kafka, [(WEBHOOK_STATUS_TOPIC, encode_status(new), new.key)])
    print(json.dumps({"endpoint": f"{args.tenant}/{args.endpoint}", "state": str(state)}))
    return 0
