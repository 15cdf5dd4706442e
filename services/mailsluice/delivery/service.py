"""`mailsluice delivery --pool NAME`: a delivery worker, the retry mover and the operator endpoints.

The worker follows the suppression list (the compacted topic mailsluice.suppressions, the same
SuppressionStore as ingest) and checks every recipient just before each attempt
(worker/suppressed.py); it starts consuming, and the service is ready, only once the list is
read to the end offsets seen at start.

SIGTERM (or Ctrl-C) drains: no new fetches, queued messages are handed back uncommitted,
in-flight sends get `drain_timeout_s` to finish, finished offsets are committed, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from mailsluice import eventloop
from mailsluice.config import ConfigError, LogSettings, load
from mailsluice.delivery.retry.mover import RetryMover
from mailsluice.delivery.shaping.runtime import ShapingRuntime
from mailsluice.delivery.shaping.settings import ShapingSettings, delivery_defaults
from mailsluice.delivery.worker import finishing
from mailsluice.delivery.worker.consumer import TransportLike, Worker, default_dsn_builder
from mailsluice.delivery.worker.settings import DeliverySettings
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.retrying import until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.delivery import QUEUE_LAG, consumer_lag
from mailsluice.metrics.retry import RETRY_BACKLOG
from mailsluice.observability.endpoints import setup_logging, start_http
from mailsluice.resolver import DnsSettings, make_resolver
from mailsluice.suppression.store import SuppressionStore

log = logging.getLogger(__name__)

# Wait between attempts to reach Kafka at start (the pod stays up and not ready meanwhile).
KAFKA_RETRY_S = 2.0
# Longest one start may take to read the suppression list to its end (then it is retried).
SUPPRESSIONS_START_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", help="sending pool (default: MAILSLUICE_DELIVERY_POOL)")
    parser.add_argument(
        "--no-retry-mover",
        action="store_true",
        help="do not run the retry mover in this process (run `mailsluice retry-mover`)",
    )
    parser.add_argument(
        "--no-ensure-topics", action="store_true", help="do not create missing topics at start"
    )


def outbound_settings() -> Any:
    """MAILSLUICE_OUTBOUND_* (transport.settings.OutboundSettings)."""
    outbound_mod = importlib.import_module("mailsluice.delivery.transport.settings")
    return load(outbound_mod.OutboundSettings)


def dkim_signer() -> Any:
    """The DKIM signer MAILSLUICE_DKIM_* describe (None: sign nothing); exits 2 when a key or
    the schedule cannot be used."""
    signing_mod = importlib.import_module("mailsluice.delivery.transport.signing")
    settings_mod = importlib.import_module("mailsluice.dkim.settings")
    try:
        return signing_mod.signer_from_settings(load(settings_mod.DkimSettings))
    except (OSError, ValueError) as exc:
        print(f"invalid DKIM keys or schedule: {exc}", file=sys.stderr)
        raise ConfigError(2) from None


def make_transport(
    dns_settings: DnsSettings, shaper: Any = None, outbound: Any = None, signer: Any = None
) -> TransportLike:
    """The SMTP transport, configured from MAILSLUICE_OUTBOUND_* settings; given the pool's
    shaper (engine.PolicyShaper) it keeps each destination's connection-level policy limits
    and tells the shaper the MX hosts of hosted domains (provider rollup); `signer` signs each
    message with DKIM as it goes out."""
    transport_mod = importlib.import_module("mailsluice.delivery.transport.client")
    outbound = outbound if outbound is not None else outbound_settings()
    hooks: dict[str, Any] = {"signer": signer}
    if shaper is not None:
        hooks |= {
            "limits": transport_mod.shaper_limits(shaper),
            "on_mx": shaper.learn_mx,
            "per_connection": shaper.per_connection,
        }
    resolver = make_resolver(dns_settings)
    transport: TransportLike = transport_mod.Transport(outbound, resolver, **hooks)
    return transport


@dataclass(frozen=True)
class Configured:
    """Everything a worker takes from its environment (in a cluster: what the operator renders
    from the SendingPool), loaded and checked before any port opens."""

    settings: DeliverySettings
    kafka: KafkaSettings
    logs: LogSettings
    dns: DnsSettings
    shaping: ShapingSettings  # the pool's shaping rules and warm-up (its overrides)
    outbound: Any  # transport.settings.OutboundSettings: source addresses, EHLO name
    signer: Any  # DKIM (None: sign nothing)
    finish: finishing.Setup  # List-Unsubscribe and tracking: settings and keys


def configure(args: argparse.Namespace) -> Configured:
    """The worker's settings from the environment and `args`; exits 2 on bad configuration."""
    settings = load(DeliverySettings)
    if args.pool:
        settings = DeliverySettings.model_validate(
            {**settings.model_dump(exclude_unset=True), "pool": args.pool}
        )
    return Configured(
        settings,
        load(KafkaSettings),
        load(LogSettings),
        load(DnsSettings),
        load(ShapingSettings),  # policy files are validated here
        outbound_settings(),
        dkim_signer(),
        finishing.load_setup(),
    )


def run(args: argparse.Namespace) -> int:
    c = configure(args)
    setup_logging(c.logs, "delivery")
    with contextlib.suppress(KeyboardInterrupt):
        return eventloop.run(
            _main(
                c,
                mover=c.settings.retry_mover and not args.no_retry_mover,
                ensure=not args.no_ensure_topics,
            )
        )
    return 0


def shaping_runtime(
    settings: DeliverySettings,
    kafka: KafkaSettings,
    shaping: ShapingSettings,
    sources: tuple[str, ...] = (),
) -> ShapingRuntime:
    """The shaping engine of the pool sending from `sources`; MAILSLUICE_DELIVERY_DEST_*
    settings given explicitly become the pool's default limits (provider rules of the policy
    still apply)."""
    explicit = settings.model_fields_set
    defaults = delivery_defaults(
        settings.dest_max_concurrency if "dest_max_concurrency" in explicit else None,
        settings.dest_max_rate if "dest_max_rate" in explicit else None,
        settings.dest_burst if "dest_burst" in explicit else None,
    )
    return ShapingRuntime(shaping, kafka, settings.pool, defaults=defaults, sources=sources)


async def _main(c: Configured, *, mover: bool, ensure: bool) -> int:
    runtime = shaping_runtime(c.settings, c.kafka, c.shaping, tuple(c.outbound.source_addresses))
    # Tracking and List-Unsubscribe change each copy before the transport signs it (DKIM).
    transport = finishing.wrap(
        make_transport(c.dns, runtime.shaper, c.outbound, c.signer),
        runtime.shaper,
        time.monotonic,  # the worker's clock (Worker's default)
        c.finish,
    )
    service = DeliveryService(
        c.settings,
        c.kafka,
        transport,
        mover=mover,
        ensure=ensure,
        build_dsn=default_dsn_builder(),
        shaper=runtime.shaper,
        on_share=runtime.set_share,  # warm-up caps follow this worker's share of partitions
        on_leave=runtime.flush,  # learned limits out before the next owner takes over
    )
    runtime.queued = service.worker.scheduler.queued
    runtime.lag = lambda: sum(lag for _partition, lag in consumer_lag(service.worker))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    runtime.start_background()
    try:
        await service.run(http=True)
    finally:
        await runtime.stop()
        await transport.close()
    return 0


class DeliveryService:
    """Worker + retry mover + HTTP endpoints; in-process for tests and `make run`."""

    def __init__(
        self,
        settings: DeliverySettings,
        kafka: KafkaSettings,
        transport: TransportLike,
        *,
        mover: bool = True,
        ensure: bool = True,
        suppressions: SuppressionStore | None = None,
        **worker_options: Any,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.ensure = ensure
        if suppressions is None:
            client_id = f"mailsluice-delivery-{settings.pool}-suppressions"
            suppressions = SuppressionStore(kafka, client_id=client_id)
        self.suppressions = suppressions
        self.worker = Worker(settings, kafka, transport, **worker_options)
        self.worker.attempts.screen.lookup = self.suppressions  # checked before each attempt
        QUEUE_LAG.track(self.worker)
        self.mover = (
            RetryMover(kafka, max_message_size=settings.max_message_size) if mover else None
        )
        if self.mover is not None:
            RETRY_BACKLOG.track(self.mover)
        self._stop = asyncio.Event()
        self._state = "starting"

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop()
        if self.mover is not None:
            self.mover.stop()

    def ready(self) -> tuple[bool, str]:
        if self._state != "running":
            return False, self._state
        if not self.suppressions.ready:
            return False, "suppression list not loaded"
        ok, detail = self.worker.ready()
        if ok and self.mover is not None:
            ok, detail = self.mover.ready()
        return ok, detail

    def live(self) -> tuple[bool, str]:
        """The worker's liveness, then the mover's (observability/progress.py)."""
        alive, detail = self.worker.progress.check()
        if alive and self.mover is not None:
            alive, detail = self.mover.progress.check()
        return alive, detail

    async def _connect(self) -> bool:
        """Create topics and start the Kafka clients, retrying while Kafka is unreachable;
        False when stopped first."""
        return await until_kafka_answers(
            self._start_clients,
            retry_s=KAFKA_RETRY_S,
            stop=self._stop,
            on_failure=self._unreachable,
        )

    async def _start_clients(self) -> None:
        if self.ensure:
            specs = standard_topics(
                self.kafka, [self.settings.pool], self.settings.max_message_size
            )
            await ensure_topics(self.kafka, specs)
        if not self.suppressions.ready:  # no send before the whole list is known
            await self.suppressions.start(SUPPRESSIONS_START_S)
        await self.worker.start()
        if self.mover is not None:
            await self.mover.start()

    async def _unreachable(self, exc: Exception) -> None:
        self._state = f"kafka unreachable: {type(exc).__name__}"
        log.warning("cannot reach Kafka (%s); retrying", exc)
        await self.worker._close()

    async def run(self, *, http: bool = False) -> None:
        runner = None
        if http:
            runner = await start_http(
                self.settings.http_host,
                self.settings.http_port,
                self.ready,
                live=self.live,
            )
            log.info(
                "delivery for pool %s: metrics on http://%s:%d/metrics",
                self.settings.pool,
                self.settings.http_host,
                self.settings.http_port,
            )
        try:
            if not await self._connect():
                return
            self._state = "running"
            mover_task = self.mover.start_background() if self.mover is not None else None
            try:
                await self.worker.run()
            finally:
                self._state = "stopping"
                if self.mover is not None and mover_task is not None:
                    self.mover.stop()
                    await mover_task
        finally:
            await self.suppressions.stop()
            if runner is not None:
                await runner.cleanup()
