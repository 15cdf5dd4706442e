"""Tenant quotas across replicas: every process that accepts mail for tenants (ingest, the
HTTP API) reports its own counts per tenant and quota window (QuotaBook.own) to the compacted
topic mailsluice.tenant-usage every `interval_s`, and folds everyone else's latest counts into
its book (QuotaBook.add_remote), so `admit` holds a tenant to its quota over all of them.

A book is one replica id (host name, pid, a random part): a restarted process is a new
replica, and the old one's records still count for their windows, as they should (that mail
was accepted). A record is a latest count, not an increment, so a report lost to a Kafka
outage is made good by the next one. The quota may be overshot by what the replicas accept
between two reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from mailsluice.contracts.topics import TENANT_USAGE_TOPIC, tenant_usage_topic_specs
from mailsluice.contracts.usage import SEPARATOR, TenantUsage, decode_usage, encode_usage, usage_key
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.producers import RenewingProducer, Send
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.quota import DAY_S, HOUR_S, QuotaBook

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 2.0
_LENGTH = {"hour": HOUR_S, "day": DAY_S}
_RECORD_BYTES = 1024  # a usage record is a few hundred bytes


def default_replica() -> str:
    """One book of this process: its host (the pod name in Kubernetes), pid and a random
    part (two books in one process, an API and an ingest under test, count apart)."""
    name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return name.replace(SEPARATOR, "-")


class UsageSharing:
    """Shares one QuotaBook's counts with the other replicas. `producer` may be the process's
    own (records go with acks); without one, one is made and stopped here."""

    def __init__(
        self,
        book: QuotaBook,
        kafka: KafkaSettings,
        *,
        replica: str = "",
        clock: Callable[[], float] = time.time,
        interval_s: float = REPORT_INTERVAL_S,
        producer: RenewingProducer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.book = book
        self.kafka = kafka
        self.replica = replica or default_replica()
        self.clock = clock
        self.interval_s = interval_s
        self._sleep = sleep
        self._own_producer = producer is None
        self._producer = producer or RenewingProducer(
            lambda: make_producer(
                kafka, max_message_size=_RECORD_BYTES, client_id="mailsluice-usage"
            ),
            name="tenant-usage",
        )
        self._reported: dict[tuple[str, str, int], int] = {}
        self._view: CompactedView | None = None
        self._task: asyncio.Task[None] | None = None

    # --- the two directions (plain: unit-tested on a simulated clock) --------------------

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """A record of the topic: another replica's count joins the book."""
        if value is None:
            return
        try:
            usage = decode_usage(value)
        except ValueError as exc:
            log.warning("skipping a tenant usage record this version cannot read: %s", exc)
            return
        if usage.replica == self.replica:
            return  # our own counts are in the book already
        if usage.start + _LENGTH[usage.window] <= self.clock():
            return  # a window that is over limits nothing
        self.book.add_remote(usage.replica, usage.tenant, usage.window, usage.start, usage.count)

    def pending(self) -> list[TenantUsage]:
        """This replica's counts that changed since they were last reported."""
        now = self.clock()
        return [
            TenantUsage(self.replica, tenant, window, start, count, now)
            for (tenant, window, start), count in self.book.own(now).items()
            if self._reported.get((tenant, window, start)) != count
        ]

    async def report(self) -> int:
        """Send the changed counts with acks; how many. Raises when Kafka does not take them
        (the next report sends them again)."""
        usages = self.pending()
        if usages:
            sends: list[Send] = [
                (TENANT_USAGE_TOPIC, encode_usage(u), usage_key(u), ()) for u in usages
            ]
            await self._producer.send_all(sends)
        self._reported.update({(u.tenant, u.window, u.start): u.count for u in usages})
        live = self.book.own(self.clock())  # windows over are reported no more
        self._reported = {key: n for key, n in self._reported.items() if key in live}
        self.book.forget(self.clock())
        return len(usages)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read every replica's counts to the end, then follow them and report ours."""
        await ensure_topics(self.kafka, tenant_usage_topic_specs(self.kafka.min_insync_replicas))
        await self._producer.get()
        self._view = CompactedView(
            self.kafka, TENANT_USAGE_TOPIC, self.apply, client_id="mailsluice-usage"
        )
        await self._view.start()
        self._view.follow_in_background()
        self._task = asyncio.create_task(self._loop(), name="tenant-usage-report")

    async def _loop(self) -> None:
        while True:
            await self._sleep(self.interval_s)
            try:
                await self.report()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reporting tenant usage failed (%s); trying again", exc)

    async def stop(self) -> None:
        """Report what is left (bounded), then stop following and sending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await asyncio.wait_for(self.report(), 5)
            except Exception as exc:
                log.warning("last tenant usage report failed: %s", exc)
        view, self._view = self._view, None
        if view is not None:
            await view.stop()
        if self._own_producer:
            await self._producer.stop()
