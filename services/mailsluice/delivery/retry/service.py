"""`mailsluice retry-mover`: the retry mover as a process of its own, with the operator
endpoints (/metrics, /healthz, /readyz); a delivery process runs one in-process instead."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from mailsluice import eventloop
from mailsluice.config import LogSettings, load
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.delivery.retry.mover import RetryMover, tier_topics
from mailsluice.delivery.retry.settings import RetryMoverSettings
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.retrying import until_kafka_answers
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.retry import RETRY_BACKLOG

log = logging.getLogger(__name__)

# Wait between attempts to reach Kafka at start.
CONNECT_RETRY_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-ensure-topics",
        action="store_true",
        help="do not create missing retry topics at start",
    )


def run(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    settings = load(RetryMoverSettings)
    logs = load(LogSettings)
    from mailsluice.observability.endpoints import setup_logging

    setup_logging(logs, "retry-mover")
    return eventloop.run(_main(kafka, settings, ensure=not args.no_ensure_topics))


async def _main(kafka: KafkaSettings, settings: RetryMoverSettings, *, ensure: bool) -> int:
    from mailsluice.observability.endpoints import start_http

    mover = RetryMover(kafka, settings=settings)
    RETRY_BACKLOG.track(mover)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, mover.stop)
    runner = await start_http(
        settings.http_host, settings.http_port, mover.ready, live=mover.progress.check
    )
    log.info("retry mover: metrics on http://%s:%d/metrics", settings.http_host, settings.http_port)
    try:
        if await _connect(mover, kafka, ensure=ensure):
            log.info("retry mover running on %s", ", ".join(tier_topics()))
            await mover.run()
    finally:
        await runner.cleanup()
    return 0


async def _connect(mover: RetryMover, kafka: KafkaSettings, *, ensure: bool) -> bool:
    """Create the tier topics and start the clients, retrying while Kafka is unreachable (the
    endpoints answer meanwhile, /readyz says not ready); False when stopped first."""

    async def attempt() -> None:
        if ensure:
            specs = standard_topics(kafka, [], DEFAULT_MAX_MESSAGE_SIZE)
            await ensure_topics(kafka, [s for s in specs if s.name in tier_topics()])
        await mover.start()

    def unreachable(exc: Exception) -> None:
        log.warning("retry mover cannot reach Kafka (%s); retrying", exc)

    return await until_kafka_answers(
        attempt, retry_s=CONNECT_RETRY_S, stop=mover.stopping, on_failure=unreachable
    )
