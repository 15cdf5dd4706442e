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
import functools
import logging
import time
from collections.abc import Sequence

from fastapi import APIRouter

from mailsluice import eventloop
from mailsluice.api import campaigns, engagement, suppressions, unengaged, webhooks
from mailsluice.api.app import ApiState, build_app
from mailsluice.api.auth import current_tenant
from mailsluice.api.idempotency import IdempotencyBook
from mailsluice.api.render import Renderer, RenderLimits
from mailsluice.api.send import Sender, SendLimits
from mailsluice.api.settings import ApiSettings
from mailsluice.api.templates import TemplateStore, templates_router
from mailsluice.config import LogSettings, load, settings_epilog
from mailsluice.contracts.topics import (
    API_IDEMPOTENCY_TOPIC,
    EVENTS_TOPIC,
    TEMPLATES_TOPIC,
    TopicSpec,
    api_topic_specs,
    campaign_topic_specs,
    control_topic_specs,
    engagement_topic_specs,
    tenant_usage_topic_specs,
    webhook_topic_specs,
)
from mailsluice.engagement.settings import HygieneSettings
from mailsluice.engagement.store import EngagementStore
from mailsluice.kafka.admin import ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import CompactedView
from mailsluice.kafka.producers import KafkaWatch, RenewingProducer, Send
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.api import Api as metrics
from mailsluice.observability.endpoints import setup_logging
from mailsluice.observability.web import WebServer, serve_until_stopped
from mailsluice.policy.rollup import load_rollup
from mailsluice.policy.shaping import load_policy
from mailsluice.suppression.store import SuppressionStore
from mailsluice.tenancy.quota import QuotaBook
from mailsluice.tenancy.registry import Registry
from mailsluice.tenancy.settings import TenancySettings
from mailsluice.tenancy.usage import UsageSharing

log = logging.getLogger(__name__)


def renderer_of(settings: ApiSettings) -> Renderer:
    return Renderer(
        RenderLimits(
            max_bytes=settings.max_render_bytes,
            max_steps=settings.max_render_steps,
            max_seconds=settings.max_render_s,
        )
    )


def api_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    """The API's own topics and those it reads (campaign stats, workers' status, warm-up
    ledger, quota usage): a fresh cluster may not have them yet."""
    isr = kafka.min_insync_replicas
    return [
        *api_topic_specs(isr),
        *campaign_topic_specs(isr),
        *control_topic_specs(isr),
        *tenant_usage_topic_specs(isr),
        *webhook_topic_specs(isr),
        *engagement_topic_specs(isr),
    ]


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
        # the grade of each message (contracts/engagement.py), and the dry-run report
        self.grades = EngagementStore(kafka, client_id="mailsluice-api-engagement")
        self.hygiene = load(HygieneSettings).policy()
        self.book = IdempotencyBook(functools.partial(self.write_one, API_IDEMPOTENCY_TOPIC))
        self.templates = TemplateStore(functools.partial(self.write_one, TEMPLATES_TOPIC))
        self.quota = QuotaBook()
        # quotas hold across the API and ingest replicas (tenancy/usage.py)
        self.usage = UsageSharing(self.quota, kafka, producer=self.producers)
        self.webhooks = webhooks.WebhookStatuses(kafka)
        self.campaigns = campaigns.KafkaCampaigns(
            kafka, warmup_of=load_policy(settings.policy_file or None).warmup
        )
        self.engagement = engagement.KafkaEngagement(kafka)
        self.sender = self._sender(settings)
        state = ApiState(registry, self.sender, self.book, settings.max_body_bytes)
        self.app = build_app(state, [*self._routers(), *routers])
        self.app.state.templates = self.templates
        self.app.state.service = self  # for the other /v1 routers: the store, the producer
        self.public = WebServer(
            self.app,
            settings.listen_host,
            settings.listen_port,
            name="api",
            ops=(settings.http_host, settings.http_port, self.ready) if ops else None,
        )
        self._views = [
            CompactedView(kafka, topic, apply, client_id="mailsluice-api")
            for topic, apply in (
                (API_IDEMPOTENCY_TOPIC, self.book.apply),
                (TEMPLATES_TOPIC, self.templates.apply),
            )
        ]
        self.watch = KafkaWatch(self.producers, EVENTS_TOPIC)

    def _sender(self, settings: ApiSettings) -> Sender:
        return Sender(
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
            grade=self.grades.grade,
        )

    def _routers(self) -> list[APIRouter]:
        """Every /v1 route but POST /v1/messages (api/app.py), on this service's stores."""
        writer = suppressions.TopicWriter(self.publish)
        return [
            templates_router(),
            suppressions.router(current_tenant, self.store, writer),
            campaigns.router(current_tenant, self.campaigns),
            engagement.router(current_tenant, self.engagement),
            webhooks.router(current_tenant, self.webhooks),
            unengaged.router(current_tenant, self.grades, self.hygiene),
        ]

    # --- Kafka ---------------------------------------------------------------------------------

    async def publish(self, sends: Sequence[Send]) -> None:
        """Every record acknowledged within the publish timeout, or raise (producer replaced)."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.producers.send_all(sends), self.settings.publish_timeout_s)
        except Exception as exc:
            self.producers.failed()
            self.watch.failed(exc)
            raise
        self.watch.wrote()
        metrics.PUBLISH_SECONDS.observe(time.monotonic() - started)

    async def write_one(self, topic: str, key: bytes, value: bytes) -> None:
        await self.publish([(topic, value, key, ())])

    # --- life cycle ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.public.port

    def ready(self) -> tuple[bool, str]:
        if not self.public.started:
            return False, "starting"
        if not (self.store.ready and self.grades.ready):
            return False, "suppression list or engagement not loaded"
        if not all(view.ready for view in self._views):
            return False, "idempotency answers or templates not loaded"
        if not (self.campaigns.ready and self.engagement.ready and self.webhooks.ready):
            return False, "campaign stats, engagement or webhook statuses not loaded"
        if self.watch.error:
            return False, f"kafka: {self.watch.error}"
        return True, "serving"

    async def start(self) -> None:
        timeout = self.settings.start_timeout_s
        await ensure_topics(self.kafka, api_topics(self.kafka))
        await self.store.start(timeout)
        await self.grades.start(timeout)
        for view in self._views:
            await view.start(timeout)
            view.follow_in_background()
        await self.campaigns.start(timeout)
        await self.engagement.start(timeout)
        await self.webhooks.start(timeout)
        await self.usage.start()
        self.watch.start()
        await self.public.start()
        log.info("HTTP API on %s:%d", self.settings.listen_host, self.port)

    async def stop(self) -> None:
        await self.public.stop()
        await self.watch.stop()
        await self.usage.stop()
        await self.webhooks.stop()
        await self.engagement.stop()
        await self.campaigns.stop()
        for view in self._views:
            await view.stop()
        await self.grades.stop()
        await self.store.stop()
        await self.producers.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = settings_epilog("API_*", "TENANTS_FILE")


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
    eventloop.run(serve_until_stopped(ApiService(settings, kafka, registry)))
    return 0
