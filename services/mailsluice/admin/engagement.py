"""`mailsluice engagement report --tenant T`: the dry run of the unengaged policy for one tenant,
before it is switched on: how many of its addresses, and which, the policy would suppress now.

Reads the compacted topic mailsluice.engagement (the stream processors' records) to its end.
The policy is the tenant's (its `hygiene` block in the tenants file, MAILSLUICE_TENANTS_FILE)
over MAILSLUICE_HYGIENE_*, and `--deliveries` / `--days` try other values. Addresses already
suppressed as unengaged are listed too, marked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime

from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.engagement import Engagement, decode_engagement, parse_engagement_key
from mailsluice.contracts.topics import ENGAGEMENT_TOPIC
from mailsluice.engagement.policy import HygienePolicy, policy_for, report
from mailsluice.engagement.settings import HygieneSettings
from mailsluice.kafka.compacted import read_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.tenancy.registry import Registry
from mailsluice.tenancy.settings import TenancySettings

EXIT_KAFKA = 1
CLIENT_ID = "mailsluice-engagement-cli"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for Kafka (default: 30)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    rep = sub.add_parser(
        "report",
        help="what the unengaged policy would suppress for a tenant (a dry run)",
        description="Print how many of a tenant's addresses, and which, the unengaged policy "
        "would suppress now: address, deliveries since the last engagement, since when, and "
        "whether it is suppressed already.",
    )
    rep.add_argument("--tenant", required=True, help="the tenant's name")
    rep.add_argument("--deliveries", type=int, default=None, help="try this many deliveries")
    rep.add_argument("--days", type=int, default=None, help="try this many days")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")


def rules_for(args: argparse.Namespace) -> HygienePolicy:
    tenants = Registry(load(TenancySettings).file)
    rules = policy_for(load(HygieneSettings).policy(), tenants.get(args.tenant))
    return HygienePolicy(
        enabled=rules.enabled,
        deliveries=args.deliveries or rules.deliveries,
        days=args.days or rules.days,
    )


async def tenant_records(settings: KafkaSettings, tenant: str, wait_s: float) -> list[Engagement]:
    """The tenant's records on the engagement topic, as of now."""
    found: dict[str, Engagement] = {}

    def apply(key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            owner, address = parse_engagement_key(key)
            if owner != tenant:
                return
            if value is None:
                found.pop(address, None)
            else:
                found[address] = decode_engagement(value)
        except ValueError:
            pass  # a record this reader does not know: not in the report

    await read_topic(settings, ENGAGEMENT_TOPIC, apply, client_id=CLIENT_ID, timeout_s=wait_s)
    return list(found.values())


def render(body: dict[str, object]) -> str:
    rules = body["policy"]
    assert isinstance(rules, dict)
    listed = body["listed"]
    assert isinstance(listed, list)
    state = "on" if rules["enabled"] else "off (dry run)"
    lines = [
        f"tenant {body['tenant']}: {body['unengaged']} of {body['addresses']} addresses "
        f"unengaged ({rules['deliveries']} deliveries over {rules['days']} days without an "
        f"open or click; policy {state})"
    ]
    for row in listed:
        since = datetime.fromtimestamp(row["since"], UTC).strftime("%Y-%m-%d")
        mark = "\tsuppressed" if row["suppressed"] else ""
        lines.append(f"{row['address']}\t{row['deliveries']}\tsince {since}{mark}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rules = rules_for(args)
    settings = load(KafkaSettings)
    try:
        records = asyncio.run(tenant_records(settings, args.tenant, args.timeout))
    except (KafkaError, TimeoutError, OSError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"mailsluice engagement: Kafka at {settings.bootstrap}: {detail}", file=sys.stderr)
        return EXIT_KAFKA
    body = report(args.tenant, records, rules, time.time(), limit=len(records))
    print(json.dumps(body, indent=2) if args.json else render(body))
    return 0
