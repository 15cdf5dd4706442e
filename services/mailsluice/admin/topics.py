"""`mailsluice topics create|list`: create and inspect the project's Kafka topics.

Topics are never left to broker auto-creation: partitions and max.message.bytes must fit the
pools and the advertised SIZE. Creation is idempotent; partitions only ever grow.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.contracts.topics import DEFAULT_POOL, TOPIC_PREFIX
from mailsluice.kafka.admin import TopicChange, ensure_topics, standard_topics
from mailsluice.kafka.settings import KafkaSettings

# Topics made with this command hold messages up to twice ingest's default SIZE when none is
# given, so raising MAILSLUICE_INGEST_MAX_MESSAGE_SIZE up to 40 MiB needs no topic change.
TOPICS_MAX_MESSAGE_SIZE = 2 * DEFAULT_MAX_MESSAGE_SIZE
EXIT_KAFKA = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for Kafka (default: 60)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser(
        "create",
        help="create missing topics and grow short ones",
        description="Create every standard topic for the given pools (idempotent).",
    )
    create.add_argument(
        "--pool",
        action="append",
        dest="pools",
        metavar="NAME",
        help=f"a delivery pool (repeatable; default: {DEFAULT_POOL})",
    )
    create.add_argument(
        "--max-message-size",
        type=_positive_int,
        default=TOPICS_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="largest message accepted (the SIZE ingest advertises; default: %(default)s)",
    )
    sub.add_parser(
        "list",
        help="list the project's topics and partition counts",
        description=f"List topics named {TOPIC_PREFIX}.* with their partition counts.",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


def format_change(change: TopicChange) -> str:
    return f"{change.name}\t{change.action}\t{change.partitions} partitions"


def run(args: argparse.Namespace) -> int:
    settings = load(KafkaSettings)
    try:
        return asyncio.run(asyncio.wait_for(_run(settings, args), args.timeout))
    except (KafkaError, TimeoutError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"mailsluice topics: Kafka at {settings.bootstrap} failed: {detail}", file=sys.stderr)
        return EXIT_KAFKA


async def _run(settings: KafkaSettings, args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, partitions in sorted((await list_topics(settings)).items()):
            print(f"{name}\t{partitions} partitions")
        return 0
    pools = args.pools or [DEFAULT_POOL]
    changes = await ensure_topics(settings, standard_topics(settings, pools, args.max_message_size))
    for change in changes:
        print(format_change(change))
    refused = [c.name for c in changes if c.action == "shrink-refused"]
    if refused:
        print(
            "note: Kafka cannot shrink partitions; kept the larger count for " + ", ".join(refused),
            file=sys.stderr,
        )
    return 0


async def list_topics(settings: KafkaSettings) -> dict[str, int]:
    """Partition counts of the topics named with the project's prefix."""
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id="mailsluice-admin")
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    prefix = TOPIC_PREFIX + "."
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if not t["error_code"] and t["topic"].startswith(prefix)
    }
