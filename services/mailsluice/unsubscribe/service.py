"""`mailsluice unsubscribe`: the one-click pages (uvicorn) and the operator endpoints, with the
Kafka producer that writes unsubscribe events, in one event loop.

The public port serves only `/u/...` (app.py), so an Ingress can expose it whole; /metrics,
/healthz and /readyz are on the operator port like every other service's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from mailsluice import eventloop
from mailsluice.config import LogSettings, load, settings_epilog
from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing
from mailsluice.contracts.events import Event, encode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.producers import KafkaWatch, RenewingProducer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.observability.endpoints import setup_logging
from mailsluice.observability.web import WebServer, serve_until_stopped
from mailsluice.unsubscribe.app import build_app

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024


class UnsubscribeService:
    """Start and stop the whole service; tests drive it in their own event loop."""

    def __init__(
        self,
        settings: UnsubscribeSettings,
        kafka: KafkaSettings,
        keys: KeyRing,
        *,
        ops: bool = True,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.producers = RenewingProducer(
            lambda: make_producer(
                kafka, max_message_size=MAX_EVENT_BYTES, client_id="mailsluice-unsubscribe"
            ),
            name="unsubscribe",
        )
        self.app = build_app(keys, self.acknowledge)
        self.public = WebServer(
            self.app,
            settings.listen_host,
            settings.listen_port,
            name="unsubscribe",
            ops=(settings.http_host, settings.http_port, self.ready) if ops else None,
        )
        self.watch = KafkaWatch(self.producers, EVENTS_TOPIC)

    async def acknowledge(self, event: Event) -> None:
        """Write the event and wait for Kafka's acknowledgement (bounded); raise otherwise."""
        key = event.recipient.strip().lower().encode()
        send = self.producers.send_all([(EVENTS_TOPIC, encode_event(event), key, ())])
        try:
            await asyncio.wait_for(send, self.settings.publish_timeout_s)
        except Exception as exc:
            self.producers.failed()
            self.watch.failed(exc)
            raise
        self.watch.wrote()

    @property
    def port(self) -> int:
        """The public port (the configured one, or the one the system chose for 0)."""
        return self.public.port

    def ready(self) -> tuple[bool, str]:
        if not self.public.started:
            return False, "starting"
        if self.watch.error:
            return False, f"kafka: {self.watch.error}"
        return True, "serving"

    async def start(self) -> None:
        self.watch.start()
        await self.public.start()
        log.info("unsubscribe pages on %s:%d", self.settings.listen_host, self.port)

    async def stop(self) -> None:
        await self.public.stop()
        await self.watch.stop()
        await self.producers.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = settings_epilog("UNSUBSCRIBE_*")


def run(args: argparse.Namespace) -> int:
    settings = load(UnsubscribeSettings)
    kafka = load(KafkaSettings)
    setup_logging(load(LogSettings), "unsubscribe")
    try:
        keys = settings.key_ring()
    except (OSError, ValueError) as exc:
        log.error("unsubscribe keys: %s", exc)
        return 2
    if not keys:
        log.error("no unsubscribe keys (MAILSLUICE_UNSUBSCRIBE_KEYS_DIR or _KEYS)")
        return 2
    eventloop.run(serve_until_stopped(UnsubscribeService(settings, kafka, keys)))
    return 0
