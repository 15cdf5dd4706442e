"""`mailsluice api`: the HTTP API (uvicorn) and the operator endpoints, with the Kafka producer
that writes its records, the suppression store, the idempotency answers and the stored
templates, all in one event loop.

Ready once the suppression, idempotency and template topics are read to their ends and Kafka
takes writes; a publish that fails makes it not ready until Kafka answers again (the producer
is replaced after a failure, kafka/producers.py, so what it buffered is not written after the
client was answered 503).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Sequence

import uvicorn
from aiohttp import web
from fastapi import APIRouter

from mailsluice.api.app import ApiState, build_app
from mailsluice.api.idempotency import IdempotencyBook
from mailsluice.api.render import Renderer, RenderLimits
from mailsluice.api.send import Sender, SendLimits
from mailsluice.api.settings import ApiSettings
from mailsluice.api.templates import TemplateStore, templates_router
from mailsluice.config import LogSettings, load
from mailsluice.contracts.topics import (
    API_IDEMPOTENCY_TOPIC,
    EVENTS_TOPIC,
    TEMPLATES_TOPIC,
    TopicSpec,
    api_topic_specs,
)
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.producers import RenewingProducer, Send
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.api import Api as metrics
from mailsluice.observability.endpoints import setup_logging, start_http, stop_event
from mailsluice.policy.rollup import load_rollup
from mailsluice.suppression.store import SuppressionStore
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.registry import Registry
from mailsluice.tenancy.settings import TenancySettings

log = logging.getLogger(__name__)

# While Kafka is not taking writes (not ready), it is asked this often whether it answers again.
KAFKA_CHECK_S = 2.0


def renderer_of(settings: ApiSettings) -> Renderer:
    return Renderer(
        RenderLimits(
            max_bytes=settings.max_render_bytes,
            max_steps=settings.max_render_steps,
            max_seconds=settings.max_render_s,
        )
    )


def api_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    return api_topic_specs(kafka.min_insync_replicas)


class ApiService:
    """Start and stop the whole service; tests drive it in their own event loop."""

    def __init__(
        self,
        settings: ApiSettings,
        kafka: KafkaSettings,
        registry: Registry,
        *,
        ops: bool = True,
        routers: Sequence[APIRouter] = (),
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.producers = RenewingProducer(
            lambda: make_producer(
                kafka, max_message_size=settings.max_message_size, client_id="mailsluice-api"
            ),
            name="api",
        )
        self.store = SuppressionStore(kafka, client_id="mailsluice-api-suppressions")
        self.book = IdempotencyBook(functools.partial(self.write_one, API_IDEMPOTENCY_TOPIC))
        self.templates = TemplateStore(functools.partial(self.write_one, TEMPLATES_TOPIC))
        self.quota = QuotaBook()
        self.sender = Sender(
            renderer=renderer_of(settings),
            rollup=load_rollup(settings.rollup_file or None),
            match=self.store.match,
            quota=self.quota,
            publish=self.publish,
            limits=SendLimits(
                max_message_size=settings.max_message_size,
                max_attachment_bytes=settings.max_attachment_bytes,
                max_data_bytes=settings.max_data_bytes,
            ),
            templates=self.templates,
        )
        state = ApiState(registry, self.sender, self.book, settings.max_body_bytes)
        self.app = build_app(state, [templates_router(), *routers])
        self.app.state.templates = self.templates
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=settings.listen_host,
                port=settings.listen_port,
                log_config=None,
                access_log=False,
                server_header=False,
                lifespan="off",
            )
        )
        self._views = [
            CompactedView(kafka, topic, apply, client_id="mailsluice-api")
            for topic, apply in (
                (API_IDEMPOTENCY_TOPIC, self.book.apply),
                (TEMPLATES_TOPIC, self.templates.apply),
            )
        ]
        self._ops = ops
        self._serving: asyncio.Task[None] | None = None
        self._http: web.AppRunner | None = None
        self._checking: asyncio.Task[None] | None = None
        self._kafka_error = "starting"

    # --- Kafka ---------------------------------------------------------------------------------

    async def publish(self, sends: Sequence[Send]) -> None:
        """Every record acknowledged within the publish timeout, or raise (producer replaced)."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.producers.send_all(sends), self.settings.publish_timeout_s)
        except Exception as exc:
            self.producers.failed()
            self._kafka_error = type(exc).__name__ or "unavailable"
            raise
        self._kafka_error = ""
        metrics.PUBLISH_SECONDS.observe(time.monotonic() - started)

    async def write_one(self, topic: str, key: bytes, value: bytes) -> None:
        await self.publish([(topic, value, key, ())])

    async def check_kafka(self) -> None:
        """While not ready for Kafka's sake, ask it for the events topic's partitions."""
        while True:
            if self._kafka_error:
                try:
                    producer = await self.producers.get()
                    await asyncio.wait_for(producer.partitions_for(EVENTS_TOPIC), KAFKA_CHECK_S)
                    self._kafka_error = ""
                except Exception as exc:
                    self.producers.failed()
                    self._kafka_error = type(exc).__name__ or "unreachable"
            await asyncio.sleep(KAFKA_CHECK_S)

    # --- life cycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The public port (the configured one, or the one the system chose for 0)."""
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.settings.listen_port

    def ready(self) -> tuple[bool, str]:
        if not self.server.started:
            return False, "starting"
        if not self.store.ready:
            return False, "suppression list not loaded"
        if not all(view.ready for view in self._views):
            return False, "idempotency answers or templates not loaded"
        if self._kafka_error:
            return False, f"kafka: {self._kafka_error}"
        return True, "serving"

    async def start(self) -> None:
        timeout = self.settings.start_timeout_s
        await ensure_topics(self.kafka, api_topics(self.kafka))
        await self.store.start(timeout)
        for view in self._views:
            await view.start(timeout)
            view.follow_in_background()
        self._checking = asyncio.create_task(self.check_kafka(), name="api-kafka")
        self._serving = asyncio.create_task(self.server.serve(), name="api-http")
        while not self.server.started:  # polled: uvicorn offers no event to wait on
            if self._serving.done():
                await self._serving  # raises why it could not start
                raise RuntimeError("the API stopped while starting")
            await asyncio.sleep(0.01)
        if self._ops:
            s = self.settings
            self._http = await start_http(s.http_host, s.http_port, self.ready)
        log.info("HTTP API on %s:%d", self.settings.listen_host, self.port)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._serving is not None:
            await self._serving
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking
        if self._http is not None:
            await self._http.cleanup()
        for view in self._views:
            await view.stop()
        await self.store.stop()
        await self.producers.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "All settings are environment variables (MAILSLUICE_API_*, MAILSLUICE_TENANTS_FILE, "
        "MAILSLUICE_KAFKA_*, MAILSLUICE_LOG_*); see docs/configuration.md."
    )


async def serve(service: ApiService) -> None:
    stop = stop_event()
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


def run(args: argparse.Namespace) -> int:
    settings = load(ApiSettings)
    kafka = load(KafkaSettings)
    tenancy = load(TenancySettings)
    setup_logging(load(LogSettings), "api")
    try:
        registry = Registry(tenancy.file)
    except (OSError, ValueError) as exc:
        log.error("tenants file: %s", exc)
        return 2
    asyncio.run(serve(ApiService(settings, kafka, registry)))
    return 0
