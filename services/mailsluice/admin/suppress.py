"""`mailsluice suppress add|remove|list`: manage the suppression list by hand.

Entries live in the compacted topic mailsluice.suppressions; `add` publishes an entry,
`remove` a tombstone, `list` reads the topic to its end. Every entry has a scope
(contracts/suppressions.py): `--scope global` (the default: nobody sends to the address),
`tenant:NAME`, `domain:SENDER-DOMAIN` or `list:TENANT/LIST`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.suppressions import GLOBAL, Scope, Suppression
from mailsluice.contracts.topics import SUPPRESSIONS_TOPIC, TopicSpec
from mailsluice.kafka.admin import ensure_topics, standard_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.suppression.store import SuppressionStore, add_suppression, remove_suppression

EXIT_USAGE = 2
EXIT_KAFKA = 1
# Suppression records are tiny; the producer's request limit only needs to fit them.
RECORD_SIZE = 64 * 1024
CLIENT_ID = "mailsluice-suppress-cli"
SCOPE_HELP = (
    "global (default), tenant:NAME, domain:SENDER-DOMAIN or list:TENANT/LIST: whose mail the "
    "suppression stops"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for Kafka (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="suppress an address", description="Suppress an address.")
    add.add_argument("address", metavar="ADDRESS", help="e-mail address (case-insensitive)")
    add.add_argument("--reason", default="manual", help="why (default: %(default)s)")
    add.add_argument("--source", default="cli", help="who suppressed it (default: %(default)s)")
    remove = sub.add_parser(
        "remove", help="lift a suppression", description="Remove an address from the list."
    )
    remove.add_argument("address", metavar="ADDRESS", help="e-mail address (case-insensitive)")
    listing = sub.add_parser(
        "list",
        help="print every suppressed address",
        description="Print one line per entry: address, scope, reason, source, time (UTC).",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array instead")
    for action, default in ((add, "global"), (remove, "global"), (listing, None)):
        action.add_argument(
            "--scope",
            metavar="LABEL",
            default=default,
            help=SCOPE_HELP if default else "only the entries of this scope (default: all)",
        )


def address_problem(address: str) -> str | None:
    """Why `address` is not a plausible e-mail address, or None. Deliberately minimal."""
    value = address.strip()
    if not value:
        return "empty address"
    if any(ch.isspace() for ch in value):
        return "address contains whitespace"
    if value.count("@") != 1:
        return "address must contain exactly one @"
    local, domain = value.split("@")
    if not local or not domain:
        return "address needs a non-empty local part and domain"
    return None


def format_entry(entry: Suppression) -> str:
    when = datetime.fromtimestamp(entry.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{entry.address}\t{entry.scope}\t{entry.reason}\t{entry.source}\t{when}"


def scope_of(args: argparse.Namespace) -> Scope | None:
    """The --scope given (None: none given, for `list`); ValueError when it names none."""
    label = getattr(args, "scope", None)
    return None if label is None else Scope.parse(label)


def suppressions_spec(settings: KafkaSettings) -> list[TopicSpec]:
    return [
        spec
        for spec in standard_topics(settings, [], RECORD_SIZE)
        if spec.name == SUPPRESSIONS_TOPIC
    ]


def run(args: argparse.Namespace) -> int:
    address = getattr(args, "address", None)
    if address is not None:
        problem = address_problem(address)
        if problem:
            print(f"mailsluice suppress: invalid address {address!r}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        scope_of(args)
    except ValueError as exc:
        print(f"mailsluice suppress: {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = load(KafkaSettings)
    try:
        return asyncio.run(asyncio.wait_for(_run(settings, args), args.timeout))
    except (KafkaError, TimeoutError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        print(
            f"mailsluice suppress: Kafka at {settings.bootstrap} failed: {detail}",
            file=sys.stderr,
        )
        return EXIT_KAFKA


async def _run(settings: KafkaSettings, args: argparse.Namespace) -> int:
    await ensure_topics(settings, suppressions_spec(settings))
    scope = scope_of(args)
    if args.action == "list":
        return await _list(settings, as_json=args.json, wait_s=args.timeout, scope=scope)
    scope = scope or GLOBAL
    producer = make_producer(settings, max_message_size=RECORD_SIZE, client_id=CLIENT_ID)
    await producer.start()
    try:
        if args.action == "add":
            entry = await add_suppression(
                producer, args.address, reason=args.reason, source=args.source, scope=scope
            )
            print(f"suppressed {format_entry(entry)}")
        else:
            await remove_suppression(producer, args.address, scope)
            print(f"removed {args.address.strip()}\t{scope.label}")
    finally:
        await producer.stop()
    return 0


async def _list(
    settings: KafkaSettings, *, as_json: bool, wait_s: float, scope: Scope | None
) -> int:
    store = SuppressionStore(settings, client_id=CLIENT_ID)
    await store.start(timeout=wait_s)
    try:
        entries = store.entries(scope)
    finally:
        await store.stop()
    if as_json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
    else:
        for entry in entries:
            print(format_entry(entry))
    return 0
