"""`mailsluice unsubscribe`: the one-click pages (uvicorn) and the operator endpoints, with the
Kafka producer that writes unsubscribe events, in one event loop.

The public port serves only `/u/...` (app.py), so an Ingress can expose it whole; /metrics,
/healthz and /readyz are on the operator port like every other service's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import uvicorn
from aiohttp import web

from mailsluice.config import LogSettings, load
from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing
from mailsluice.contracts.events import Event, encode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.observability.endpoints import setup_logging, start_http, stop_event
from mailsluice.unsubscribe.app import build_app

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024
# While Kafka is unreachable (not ready), it is asked this often whether it answers again.
KAFKA_CHECK_S = 2.0


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
        config = uvicorn.Config(
            self.app,
            host=settings.listen_host,
            port=settings.listen_port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self._serving: asyncio.Task[None] | None = None
        self._ops = ops
        self._http: web.AppRunner | None = None
        self._kafka_error = "starting"
        self._checking: asyncio.Task[None] | None = None

    async def acknowledge(self, event: Event) -> None:
        """Write the event and wait for Kafka's acknowledgement (bounded); raise otherwise."""
        key = event.recipient.strip().lower().encode()
        send = self.producers.send_all([(EVENTS_TOPIC, encode_event(event), key, ())])
        try:
            await asyncio.wait_for(send, self.settings.publish_timeout_s)
        except Exception as exc:
            self.producers.failed()
            self._kafka_error = type(exc).__name__
            raise
        self._kafka_error = ""

    async def check_kafka(self) -> None:
        """While not ready for Kafka's sake, ask it for the events topic's partitions: a pod
        out of traffic gets no POST that would show Kafka answering again."""
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

    @property
    def port(self) -> int:
        """The public port (the configured one, or the one the system chose for 0)."""
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.settings.listen_port

    def ready(self) -> tuple[bool, str]:
        if not self.server.started:
            return False, "starting"
        if self._kafka_error:
            return False, f"kafka: {self._kafka_error}"
        return True, "serving"

    async def start(self) -> None:
        self._checking = asyncio.create_task(self.check_kafka(), name="unsubscribe-kafka")
        self._serving = asyncio.create_task(self.server.serve(), name="unsubscribe-http")
        while not self.server.started:  # polled: uvicorn offers no event to wait on
            if self._serving.done():
                await self._serving  # raises why it could not start
                raise RuntimeError("the unsubscribe service stopped while starting")
            await asyncio.sleep(0.01)
        if self._ops:
            s = self.settings
            self._http = await start_http(s.http_host, s.http_port, self.ready)
        log.info("unsubscribe pages on %s:%d", self.settings.listen_host, self.port)

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
        await self.producers.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "All settings are environment variables (MAILSLUICE_UNSUBSCRIBE_*, MAILSLUICE_KAFKA_*, "
        "MAILSLUICE_LOG_*); see docs/configuration.md."
    )


async def serve(service: UnsubscribeService) -> None:
    stop = stop_event()
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()


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
    asyncio.run(serve(UnsubscribeService(settings, kafka, keys)))
    return 0
