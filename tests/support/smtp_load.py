"""Steady SMTP load on a running ingest for the fault tests: a few connections, each sending one
message after another (one recipient each, a fresh one per message), keeping every reply.

The recipient's local part names the attempt ("m<n>"), so the queue records read back from
Kafka are matched to the replies: a 250'd attempt must be there, exactly what "nothing that got
a 250 is lost" means.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mailsluice.contracts.envelope import envelope_from_headers
from mailsluice.contracts.topics import DEFAULT_POOL, queue_topic
from mailsluice.kafka.settings import KafkaSettings
from support.eventually import eventually
from support.ingest import smtp_send
from support.topic_reader import reading

BODY = b"Subject: durability\r\n\r\nbody\r\n"


@dataclass
class Attempt:
    recipient: str
    code: int | None  # None: no DATA reply (connection error)
    at: float  # monotonic time of the reply


@dataclass
class SmtpLoad:
    port: int
    domain: str
    attempts: list[Attempt] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def send_one(self) -> Attempt:
        """One message in this thread: its recipient and the DATA reply code."""
        recipient = f"m{next(self._numbers)}@{self.domain}"
        try:
            result = smtp_send(self.port, "load@client.test", [recipient], BODY)
            code = result.data_reply[0] if result.data_reply else None
        except OSError:
            code = None
        attempt = Attempt(recipient, code, time.monotonic())
        self.attempts.append(attempt)
        return attempt

    def with_code(self, code: int | None, since: float = 0.0) -> list[Attempt]:
        return [a for a in self.attempts if a.code == code and a.at >= since]

    @property
    def accepted(self) -> set[str]:
        return {a.recipient for a in self.with_code(250)}

    def counts(self) -> dict[int | None, int]:
        out: dict[int | None, int] = {}
        for attempt in self.attempts:
            out[attempt.code] = out.get(attempt.code, 0) + 1
        return out

    async def accepted_since(self, since: float, count: int, *, within: float, what: str) -> None:
        """Until `count` messages got a 250 after `since` (monotonic)."""
        await eventually(
            lambda: len(self.with_code(250, since)) >= count,
            within=within,
            interval=0.1,
            what=what,
            detail=lambda: f"replies so far: {self.counts()}",
        )

    def summary(self, found: Counter[str]) -> str:
        """The figures of a run, given what is in the queue (queued_recipients)."""
        accepted, refused = self.accepted, {a.recipient for a in self.with_code(451)}
        return (
            f"replies {self.counts()}; 250'd {len(accepted)}, found {len(accepted & set(found))}, "
            f"lost {len(accepted - set(found))}; 451'd {len(refused)}, queued anyway "
            f"{len(refused & set(found))}; duplicated {sum(n > 1 for n in found.values())}"
        )

    @contextlib.asynccontextmanager
    async def running(self, connections: int, per_second: float) -> AsyncIterator[SmtpLoad]:
        """`connections` senders in threads for the block, together starting at most
        `per_second` messages a second; each finishes its message after the block."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        gap = connections / per_second

        async def sender() -> None:
            while not stopping.is_set():
                # pacing only: a message that took longer than the gap starts the next at once
                next_at = loop.time() + gap
                await asyncio.to_thread(self.send_one)
                await asyncio.sleep(max(next_at - loop.time(), 0.0))

        tasks = [asyncio.create_task(sender(), name=f"smtp-load-{i}") for i in range(connections)]
        try:
            yield self
        finally:
            stopping.set()
            await asyncio.gather(*tasks)


async def queued_recipients(settings: KafkaSettings, domain: str) -> Counter[str]:
    """How often each recipient at `domain` is in the default pool's queue, read to its end as
    it stands now (so everything acknowledged before is there)."""
    async with reading(settings, queue_topic(DEFAULT_POOL)) as reader:
        records = await reader.read_to_end()
    return Counter(
        rcpt
        for record in records
        for rcpt in envelope_from_headers(record.headers).recipients
        if rcpt.endswith(f"@{domain}")
    )
