"""Helpers for delivery worker tests: pools on the real broker, an in-memory fake transport,
the events a pool produced, a worker running in the background."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from mailsluice.contracts.envelope import ENVELOPE_HEADER, Envelope, encode_envelope
from mailsluice.contracts.events import Event, EventType, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC, consumer_group, queue_topic
from mailsluice.delivery.service import DeliveryService
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.admin import ensure_topics, standard_topics, topic_partitions
from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually

FINAL = {EventType.DELIVERY, EventType.BOUNCE, EventType.EXPIRATION}


@dataclass(frozen=True)
class Result:
    recipient: str
    code: int
    enhanced: str = ""
    text: str = ""
    remote: str = "fake[127.0.0.1]:25"
    phase: str = "rcpt"  # where the remote said it (end of DATA for an acceptance)
    source: str = ""
    sent_on_connection: int = 0

    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]:
        if self.code < 300:
            return "delivered"
        return "permanent" if self.code >= 500 else "transient"


Script = Callable[[Envelope, str], Awaitable[tuple[int, str, str]]]


async def accept_all(_env: Envelope, _rcpt: str) -> tuple[int, str, str]:
    return 250, "2.0.0", "ok"


@dataclass
class FakeTransport:
    script: Script = accept_all
    calls: list[tuple[str, str]] = field(default_factory=list)  # (queue_id, recipient)
    sources: list[str] = field(default_factory=list)  # the source address of each send
    closed: bool = False

    async def send(self, env: Envelope, message: bytes, *, source: str = "") -> list[Result]:
        self.sources.append(source)
        out = []
        for rcpt in env.recipients:
            self.calls.append((env.queue_id, rcpt))
            code, enhanced, text = await self.script(env, rcpt)
            phase = "data" if code < 300 else "rcpt"
            out.append(Result(rcpt, code, enhanced, text, phase=phase, source=source))
        return out

    async def close(self) -> None:
        self.closed = True


def fake_dsn(
    env: Envelope, message: bytes, failures: list[Any], *, reporting_mta: str, now: float
) -> bytes:
    lines = [f"{f.recipient} {f.code} {f.enhanced}" for f in failures]
    return ("Subject: Undelivered mail\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


def new_pool() -> str:
    return "t" + os.urandom(4).hex()


async def setup_pool(kafka_settings: KafkaSettings, pool: str) -> None:
    await ensure_topics(kafka_settings, standard_topics(kafka_settings, [pool], 1024 * 1024))


async def enqueue(
    kafka_settings: KafkaSettings,
    envs: list[Envelope | None],
    body: bytes | Callable[[Envelope], bytes] = b"Subject: t\r\n\r\nhello\r\n",
    pool: str = "",
) -> None:
    """Produce queue records keyed by routing key, in order (None: an undecodable record
    without envelope, on `pool`'s queue); `body` may be a function of the envelope."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_settings.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        futures = []
        for env in envs:
            if env is None:
                futures.append(
                    await producer.send(
                        queue_topic(pool),
                        body if isinstance(body, bytes) else b"junk",
                        key=b"junk",
                        headers=[("other", b"x")],
                    )
                )
                continue
            futures.append(
                await producer.send(
                    queue_topic(env.pool),
                    body(env) if callable(body) else body,
                    key=env.routing_key.encode(),
                    headers=[(ENVELOPE_HEADER, encode_envelope(env))],
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def envelope(
    pool: str, n: int, recipients: tuple[str, ...], sender: str = "s@origin.example", **kw: Any
) -> Envelope:
    """The envelope of message `n` of `pool`, routed by its first recipient's domain, received
    now; `kw` sets any other field (or overrides one of these)."""
    fields: dict[str, Any] = {
        "queue_id": f"{pool}-{n:05d}",
        "pool": pool,
        "sender": sender,
        "recipients": recipients,
        "routing_key": recipients[0].rpartition("@")[2],
        "received_at": time.time(),
    }
    return Envelope(**{**fields, **kw})


class EventLog:
    """Reads mailsluice.events in the background, keeping the events of one pool."""

    def __init__(self, kafka_settings: KafkaSettings, pool: str) -> None:
        self.pool = pool
        self.events: list[Event] = []
        self._consumer = AIOKafkaConsumer(
            EVENTS_TOPIC,
            bootstrap_servers=kafka_settings.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventLog:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    event = decode_event(rec.value)
                    if event.pool == self.pool:
                        self.events.append(event)

    def finals(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter(
            (e.queue_id, e.recipient) for e in self.events if e.type in FINAL
        )

    def of(self, kind: EventType) -> list[Event]:
        return [e for e in self.events if e.type == kind]

    def summary(self) -> str:
        """The events so far by type, for a failure message."""
        counts = collections.Counter(e.type.value for e in self.events)
        return f"events so far: {dict(sorted(counts.items()))}"

    async def expect(self, kind: EventType, count: int, *, within: float = 60) -> None:
        """Wait until exactly `count` events of `kind` have come."""
        await eventually(
            lambda: len(self.of(kind)) == count,
            within=within,
            what=f"{count} {kind.value} events",
            detail=self.summary,
        )

    async def expect_final(self, keys: set[tuple[str, str]], *, within: float = 60) -> None:
        """Wait until each (queue id, recipient) of `keys` has its final event."""
        await eventually(
            lambda: keys <= set(self.finals()),
            within=within,
            what=f"the final events of {len(keys)} recipients",
            detail=self.summary,
        )


async def committed(kafka_settings: KafkaSettings, pool: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(consumer_group(pool))
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == queue_topic(pool)
    }


async def group_members(kafka_settings: KafkaSettings, pool: str) -> int:
    """Members of the pool's consumer group, as its coordinator sees them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([consumer_group(pool)])
    finally:
        await admin.close()
    (group,) = response.groups
    return len(group[5])  # (error, group id, state, protocol type, protocol, members, ...)


async def committed_total(kafka_settings: KafkaSettings, pool: str) -> int:
    """The pool's committed offsets summed over its queue partitions."""
    return sum((await committed(kafka_settings, pool)).values())


async def queue_ends(kafka_settings: KafkaSettings, pool: str) -> dict[int, int]:
    """The end offset of each partition of the pool's queue topic, now."""
    partitions = await topic_partitions(kafka_settings, queue_topic(pool), 30)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_settings.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def committed_to_end(kafka_settings: KafkaSettings, pool: str, within: float = 30) -> None:
    """Wait until the pool's group has committed its queue topic up to the end as it stands."""
    await eventually(
        lambda: drained(kafka_settings, pool),
        within=within,
        interval=0.2,
        what=f"{queue_topic(pool)} committed to its end",
        detail=lambda: committed(kafka_settings, pool),
    )


async def drained(kafka_settings: KafkaSettings, pool: str) -> bool:
    """Whether the pool's group has committed every record its queue topic holds now: each
    record, and whatever it produced before it finished (a DSN, a retry), is done."""
    ends, done = await queue_ends(kafka_settings, pool), await committed(kafka_settings, pool)
    return all(done.get(partition, 0) >= end for partition, end in ends.items())


class Running:
    """A DeliveryService running in a task for the duration of a `async with` (or between
    start() and stop())."""

    def __init__(self, service: DeliveryService) -> None:
        self.service = service
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> DeliveryService:
        task = self.task = asyncio.create_task(self.service.run())

        def ready() -> bool:
            if task.done():
                task.result()  # a crash ends the wait with its own error
                raise AssertionError("the delivery service ended before it was ready")
            return self.service.ready()[0]

        await eventually(
            ready, within=60, what="the delivery service to be ready", detail=self.service.ready
        )
        return self.service

    async def stop(self) -> None:
        assert self.task is not None
        self.service.stop()
        await asyncio.wait_for(self.task, 60)

    async def __aenter__(self) -> DeliveryService:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def service_for(
    kafka_settings: KafkaSettings,
    pool: str,
    transport: Any,
    shaper: PolicyShaper | None = None,
    *,
    mover: bool = True,
    on_share: Callable[[int, int], None] | None = None,
    on_leave: Callable[[], Awaitable[None]] | None = None,
    **settings: Any,
) -> DeliveryService:
    """A DeliveryService of `pool` over `transport` (DSNs made up by fake_dsn), committing every
    0.2 s unless `settings` say otherwise, whose consumer notices a lost member within 6 s."""
    settings.setdefault("commit_interval_s", 0.2)
    return DeliveryService(
        DeliverySettings(pool=pool, **settings),
        kafka_settings,
        transport,
        mover=mover,
        build_dsn=fake_dsn,
        shaper=shaper,
        on_share=on_share,
        on_leave=on_leave,
        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
    )
