"""`mailsluice streams`: run the stream processors as one faust worker.

Settings are validated first (exit 2). The events and suppressions topics are created if
missing (unless --no-ensure-topics) and the events topic's partition count is read, since
the app's tables and internal topics copy it. Then a faust Worker runs the app and the
operator endpoints (/metrics, /healthz, /readyz) on its event loop until SIGTERM or SIGINT,
and the command exits 0 after a clean stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from mailsluice.config import LogSettings, load
from mailsluice.contracts.topics import (
    CAMPAIGN_STATS_TOPIC,
    ENGAGEMENT_DAYS_TOPIC,
    ENGAGEMENT_TOPIC,
    EVENTS_TOPIC,
    SUPPRESSIONS_TOPIC,
)
from mailsluice.kafka.admin import standard_topics
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.streams.settings import StreamsSettings

log = logging.getLogger(__name__)

# Only the events and suppressions topics are created here; their configs do not depend on
# the message size.
_SPEC_MESSAGE_SIZE = 1024 * 1024
_RETRY_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-ensure-topics",
        action="store_true",
        help="do not create the events and suppressions topics when they are missing",
    )


def run(args: argparse.Namespace) -> int:
    kafka = load(KafkaSettings)
    settings = load(StreamsSettings)
    logs = load(LogSettings)
    from mailsluice.observability.endpoints import setup_logging

    setup_logging(logs, "streams")
    # faust logs topic tables and every service start at INFO; its warnings still show.
    for name in ("faust", "mode"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        partitions = loop.run_until_complete(
            _prepare(kafka, settings, ensure=not args.no_ensure_topics)
        )
    except (TimeoutError, OSError) as exc:
        log.error("streams: cannot start: %s", exc)
        loop.close()
        return 1
    return _work(kafka, settings, logs, partitions, loop)


async def _prepare(kafka: KafkaSettings, settings: StreamsSettings, *, ensure: bool) -> int:
    """Create the topics and return the events topic's partition count, retrying while Kafka
    is unreachable for up to start_timeout_s (then OSError: the pod restarts)."""
    from mailsluice.kafka.retrying import until_kafka_answers

    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.start_timeout_s
    found: list[int] = []

    async def attempt() -> None:
        remaining = deadline - loop.time()
        found.append(await asyncio.wait_for(_topics(kafka, settings, ensure, remaining), remaining))

    def give_up_at_the_deadline(exc: Exception) -> None:
        if loop.time() + _RETRY_S >= deadline:
            raise OSError(f"Kafka at {kafka.bootstrap}: {exc or type(exc).__name__}") from exc
        log.warning("streams: Kafka not usable yet (%s); retrying", exc)

    await until_kafka_answers(attempt, retry_s=_RETRY_S, on_failure=give_up_at_the_deadline)
    return found[0]


async def _topics(
    kafka: KafkaSettings, settings: StreamsSettings, ensure: bool, wait_s: float
) -> int:
    from mailsluice.kafka.admin import ensure_topics, topic_partitions
    from mailsluice.streams.app import internal_topics

    if ensure:
        wanted = (
            EVENTS_TOPIC,
            SUPPRESSIONS_TOPIC,
            CAMPAIGN_STATS_TOPIC,
            ENGAGEMENT_DAYS_TOPIC,
            ENGAGEMENT_TOPIC,
        )
        specs = standard_topics(kafka, [], _SPEC_MESSAGE_SIZE)
        await ensure_topics(kafka, [s for s in specs if s.name in wanted], wait_s)
    partitions = len(await topic_partitions(kafka, EVENTS_TOPIC, wait_s))
    await ensure_topics(kafka, internal_topics(settings.app_id, partitions, kafka), wait_s)
    return partitions


def _work(
    kafka: KafkaSettings,
    settings: StreamsSettings,
    logs: LogSettings,
    partitions: int,
    loop: asyncio.AbstractEventLoop,
) -> int:
    import faust

    from mailsluice.streams.app import StreamsProcessor
    from mailsluice.streams.http import HttpService

    processor = StreamsProcessor(settings, kafka, partitions)
    http = HttpService(
        settings.http_host, settings.http_port, processor.ready, processor.live, loop=loop
    )
    worker = faust.Worker(
        processor.app,
        http,
        loop=loop,
        loglevel=logs.level,
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.spinner = None  # a terminal progress spinner; logs are the output here
    log.info(
        "streams: %d partitions, metrics on http://%s:%d/metrics",
        partitions,
        settings.http_host,
        settings.http_port,
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # the worker always ends this way; 0 after a clean stop
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
