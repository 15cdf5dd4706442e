"""`mailsluice webhooks`: the events dispatcher and the retry loop in one process, sharing the
courier (HTTP session, producer, endpoint statuses), with the operator endpoints.
`mailsluice webhooks dead|status|pause|resume` are the tools (admin.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from mailsluice.config import LogSettings, load
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.contracts.topics import (
    WEBHOOK_STATUS_TOPIC,
    WEBHOOKS_GROUP,
    webhook_topic_specs,
)
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.retrying import until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.webhooks import Webhooks as metrics
from mailsluice.observability.endpoints import setup_logging, start_http, stop_event
from mailsluice.tenancy.registry import Registry
from mailsluice.tenancy.settings import TenancySettings
from mailsluice.webhooks import admin
from mailsluice.webhooks.courier import Courier
from mailsluice.webhooks.dispatch import Dispatcher
from mailsluice.webhooks.http import open_session
from mailsluice.webhooks.retries import RetryLoop
from mailsluice.webhooks.settings import WebhooksSettings
from mailsluice.webhooks.status import EndpointBook

log = logging.getLogger(__name__)

CONNECT_RETRY_S = 2.0


class WebhooksService:
    """Start and stop the whole stage; tests drive it in their own event loop."""

    def __init__(
        self,
        settings: WebhooksSettings,
        kafka: KafkaSettings,
        registry: Registry,
        *,
        ops: bool = True,
        wall: Callable[[], float] = time.time,
        consumer_options: dict[str, Any] | None = None,
        events_group: str = WEBHOOKS_GROUP,
    ) -> None:
        self.settings = settings
        self._events_group = events_group
        self.kafka = kafka
        self.registry = registry
        self.book = EndpointBook(settings.pause_after_s)
        self.view = CompactedView(
            kafka, WEBHOOK_STATUS_TOPIC, self.book.apply, client_id="mailsluice-webhooks-status"
        )
        self.producer = RenewingProducer(
            lambda: make_producer(
                kafka, max_message_size=DEFAULT_MAX_MESSAGE_SIZE, client_id="mailsluice-webhooks"
            ),
            name="webhooks",
        )
        self._ops = ops
        self._wall = wall
        self._consumer_options = consumer_options
        self._http: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.dispatcher: Dispatcher | None = None
        self.retries: RetryLoop | None = None

    async def start(self) -> None:
        """Read the endpoint statuses, then start both consumers."""
        s = self.settings
        if self._ops and self._http is None:
            self._http = await start_http(s.http_host, s.http_port, self.ready, live=self.live)
        if not self.view.ready:  # a start that failed later (Kafka away) is attempted again
            await self.view.start()
            self.view.follow_in_background()
        metrics.PAUSED.set(self.book.paused_count())
        self._session = open_session(s.networks(), s.max_in_flight)
        courier = Courier(
            self.registry,
            self.book,
            self.producer,
            self._session,
            schedule=s.schedule(),
            allowed=s.networks(),
            timeout_s=s.request_timeout_s,
            max_in_flight=s.max_in_flight,
            per_endpoint=s.endpoint_in_flight,
            wall=self._wall,
        )
        opts = self._consumer_options
        first = {**(opts or {}), "auto_offset_reset": s.first_start}
        self.dispatcher = Dispatcher(
            self.kafka,
            s,
            self.registry,
            courier,
            wall=self._wall,
            consumer_options=first,
            group=self._events_group,
        )
        self.retries = RetryLoop(self.kafka, s, courier, wall=self._wall, consumer_options=opts)
        await self.dispatcher.start()
        await self.retries.start()
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="webhooks-dispatch"),
            asyncio.create_task(self.retries.run(), name="webhooks-retry"),
        ]

    def ready(self) -> tuple[bool, str]:
        if not self.view.ready or self.dispatcher is None or self.retries is None:
            return False, "starting (reading endpoint statuses)"
        for part in (self.dispatcher, self.retries):
            ok, detail = part.ready()
            if not ok:
                return False, detail
        return True, "sending webhooks"

    def live(self) -> tuple[bool, str]:
        for part in (self.dispatcher, self.retries):
            if part is not None:
                ok, detail = part.progress.check()
                if not ok:
                    return False, f"{part.name}: {detail}"
        return True, "ok"

    async def stop(self) -> None:
        for part in (self.dispatcher, self.retries):
            if part is not None:
                part.stop()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await task
        await self.view.stop()
        await self.producer.stop()
        if self._session is not None:
            await self._session.close()
        if self._http is not None:
            await self._http.cleanup()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Without an action, runs the webhook sender. Settings: MAILSLUICE_WEBHOOKS_*, "
        "MAILSLUICE_TENANTS_FILE, MAILSLUICE_KAFKA_*; see docs/configuration.md."
    )
    parser.add_argument(
        "--no-ensure-topics", action="store_true", help="do not create missing webhook topics"
    )
    admin.add_actions(parser)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None):
        return admin.run(args)
    settings = load(WebhooksSettings)
    kafka = load(KafkaSettings)
    tenancy = load(TenancySettings)
    setup_logging(load(LogSettings), "webhooks")
    registry = Registry(tenancy.file)
    asyncio.run(
        _serve(WebhooksService(settings, kafka, registry), ensure=not args.no_ensure_topics)
    )
    return 0


async def _serve(service: WebhooksService, *, ensure: bool) -> None:
    stop = stop_event()

    async def attempt() -> None:
        if ensure:
            await ensure_topics(
                service.kafka, webhook_topic_specs(service.kafka.min_insync_replicas)
            )
        await service.start()

    def unreachable(exc: Exception) -> None:
        log.warning("webhooks cannot reach Kafka (%s); retrying", exc)

    try:
        if await until_kafka_answers(
            attempt, retry_s=CONNECT_RETRY_S, stop=stop, on_failure=unreachable
        ):
            log.info("webhooks sending")
            await stop.wait()
    finally:
        await service.stop()
