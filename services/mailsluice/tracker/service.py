"""`mailsluice tracker`: the pixel and click endpoints (uvicorn) and the operator endpoints,
with the Kafka producer that writes open and click events, in one event loop.

The answers never wait for Kafka: events go to a bounded outbox (kafka/outbox.py) that sends
them in the background, keyed by queue id, and new ones are dropped and counted while it is
full. A tracker without Kafka still redirects every click; it loses only counts.
"""

from __future__ import annotations

import argparse
import logging

from mailsluice import eventloop
from mailsluice.config import LogSettings, load, settings_epilog
from mailsluice.contracts.events import Event, encode_event
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.outbox import Outbox
from mailsluice.kafka.producers import RenewingProducer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.tracker import Tracker as metrics
from mailsluice.observability.endpoints import setup_logging
from mailsluice.observability.web import WebServer, serve_until_stopped
from mailsluice.tracker.app import Judging, build_app, trusted_networks
from mailsluice.tracking.machines import Machines, load_machines
from mailsluice.tracking.settings import TrackingSettings
from mailsluice.tracking.tokens import TrackingKeys

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 64 * 1024
# How long a stopping tracker tries to write the events it still holds.
STOP_GRACE_S = 10.0


class TrackerService:
    """Start and stop the whole service; tests drive it in their own event loop."""

    def __init__(
        self,
        settings: TrackingSettings,
        kafka: KafkaSettings,
        keys: TrackingKeys,
        machines: Machines,
        *,
        ops: bool = True,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.settings = settings
        self._grace = stop_grace_s
        self.producers = RenewingProducer(
            lambda: make_producer(
                kafka, max_message_size=MAX_EVENT_BYTES, client_id="mailsluice-tracker"
            ),
            name="tracker",
        )
        self.outbox = Outbox(
            self.producers,
            limit=settings.event_buffer,
            name="tracker",
            on_lost=self._lost,
            on_sent=self._sent,
        )
        judging = Judging(machines, settings.too_soon_s, trusted_networks(settings.trusted_proxies))
        self.app = build_app(keys, judging, self.record)
        self.public = WebServer(
            self.app,
            settings.listen_host,
            settings.listen_port,
            name="tracker",
            ops=(settings.http_host, settings.http_port, self.ready) if ops else None,
        )

    def record(self, event: Event) -> None:
        """Queue the event for Kafka, keyed by queue id; drop (and count) it when full."""
        send = (EVENTS_TOPIC, encode_event(event), event.queue_id.encode(), ())
        if not self.outbox.put(send):
            metrics.DROPPED.inc()
        metrics.PENDING.set(self.outbox.pending)

    def _sent(self) -> None:
        metrics.PENDING.set(self.outbox.pending)

    def _lost(self, count: int) -> None:
        metrics.DROPPED.inc(count)
        metrics.PENDING.set(0)

    @property
    def port(self) -> int:
        """The public port (the configured one, or the one the system chose for 0)."""
        return self.public.port

    def ready(self) -> tuple[bool, str]:
        # Ready without Kafka too: redirects must keep working; the outbox holds the events.
        if not self.public.started:
            return False, "starting"
        return True, f"serving ({self.outbox.pending} events pending)"

    async def start(self) -> None:
        self.outbox.start()
        await self.public.start()
        log.info("tracker on %s:%d", self.settings.listen_host, self.port)

    async def stop(self) -> None:
        await self.public.stop()
        await self.outbox.stop(self._grace)
        await self.producers.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = settings_epilog("TRACKING_*")


def run(args: argparse.Namespace) -> int:
    settings = load(TrackingSettings)
    kafka = load(KafkaSettings)
    setup_logging(load(LogSettings), "tracker")
    try:
        keys = settings.key_ring()
        machines = load_machines(settings.machines_file)
    except (OSError, ValueError) as exc:
        log.error("tracker start: %s", exc)
        return 2
    if not keys:
        log.error("no tracking keys (MAILSLUICE_TRACKING_KEYS_DIR or _KEYS)")
        return 2
    eventloop.run(serve_until_stopped(TrackerService(settings, kafka, keys, machines)))
    return 0
