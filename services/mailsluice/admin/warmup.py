"""`mailsluice warmup plan|show`: warm-up schedules and today's state of a pool.

`plan` prints a schedule day by day (a preset, or a pool's from the policy, no Kafka needed);
`show` prints, per source address of the pool found in the ledger topic mailsluice.warmup or
named by the policy, its warm-up day, today's caps and what workers have used this period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.topics import DEFAULT_POOL, WARMUP_TOPIC
from mailsluice.contracts.warmup import parse_record_key
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.compacted import read_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.shaping import PolicyInvalid, PoolSection, load_policy
from mailsluice.policy.warmup import ALL, PRESETS, Plan, Schedule, day_number, period_start
from mailsluice.policy.warmup_config import WarmupConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plan = sub.add_parser("plan", help="print a warm-up schedule day by day")
    what = plan.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", choices=sorted(PRESETS), help="a shipped preset")
    what.add_argument("--pool", help="the pool's schedule from the policy")
    show = sub.add_parser("show", help="today's warm-up day, caps and usage of a pool")
    show.add_argument("--pool", default=DEFAULT_POOL, help=f"the pool (default: {DEFAULT_POOL})")
    show.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Kafka")
    for p in (plan, show):
        p.add_argument("--policy", default="", help="policy file (default: the shipped one)")
        p.add_argument("--overrides", default="", help="the pool's overrides as JSON")


def load_config(args: argparse.Namespace) -> WarmupConfig | None:
    policy = load_policy(args.policy or None)
    if args.overrides:
        policy = policy.with_pool(args.pool, PoolSection.model_validate_json(args.overrides))
    return policy.warmup(args.pool)


def load_plan(args: argparse.Namespace) -> Plan | None:
    config = load_config(args)
    return None if config is None else Plan.from_config(config)


def plan_lines(schedules: dict[str, Schedule]) -> list[str]:
    lines = [f"{'SCOPE':<12} {'DAY':>4} {'CAP':>10} {'PER':<5} {'PER DAY':>10}"]
    for scope, schedule in schedules.items():
        for day in range(1, schedule.days + 1):
            lines.append(
                f"{scope:<12} {day:>4} {schedule.cap(day):>10} {schedule.period:<5} "
                f"{schedule.daily(day):>10}"
            )
        after = "unlimited" if schedule.cap(schedule.days + 1) is None else "hold last cap"
        lines.append(f"{scope:<12} {'>' + str(schedule.days):>4} {after:>10}")
    return lines


def show_lines(
    pool: str, plan: Plan, usage: dict[str, int], now: float, source: str = ""
) -> list[str]:
    day = day_number(plan.start, now)
    who = f"pool {pool}" + (f" address {source}" if source else "")
    lines = [f"{who}: warm-up day {day} (started {plan.start.isoformat()})"]
    for scope, schedule in plan.schedules.items():
        cap = schedule.cap(day)
        shown = "complete (no cap)" if cap is None else f"{cap}/{schedule.period}"
        lines.append(f"  {scope:<12} cap {shown:<20} used this {schedule.period}: {usage[scope]}")
    if plan.over_cap == "overflow":
        lines.append(f"  over cap: overflow to pool {plan.overflow_pool}")
    else:
        lines.append("  over cap: deferred to the next period")
    return lines


def sum_usage(
    plan: Plan,
    pool: str,
    records: list[tuple[bytes | None, bytes | None]],
    now: float,
    source: str | None = None,
) -> dict[str, int]:
    """This period's usage per scope (of one source address, when given); pool-wide
    ("*@<owner>") records of all workers add up."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        if key is not None:
            latest[key] = value
    usage = dict.fromkeys(plan.schedules, 0)
    for key, value in latest.items():
        rec_pool, rec_source, scope_key = parse_record_key(key)
        scope = ALL if scope_key.startswith(ALL + "@") else scope_key
        if rec_pool != pool or value is None or scope not in plan.schedules:
            continue
        if source is not None and rec_source != source:
            continue
        data = json.loads(value)
        window = period_start(plan.schedules[scope].period, now)
        if data.get("start") == plan.start.isoformat() and float(data["window"]) == window:
            usage[scope] += int(data["used"])
    return usage


def run(args: argparse.Namespace) -> int:
    if args.action == "plan" and args.preset:
        print("\n".join(plan_lines({ALL: PRESETS[args.preset]()})))
        return 0
    try:
        config = load_config(args)
    except (PolicyInvalid, OSError, ValueError) as exc:
        print(f"mailsluice warmup: {exc}", file=sys.stderr)
        return 2
    if config is None:
        print(f"pool {args.pool} has no warm-up")
        return 0
    if args.action == "plan":
        print("\n".join(plan_lines(Plan.from_config(config).schedules)))
        return 0
    settings = load(KafkaSettings)
    try:
        records = asyncio.run(asyncio.wait_for(read_ledger(settings, args.timeout), args.timeout))
    except (KafkaError, TimeoutError, OSError, RuntimeError) as exc:
        print(f"mailsluice warmup: Kafka at {settings.bootstrap}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(show_sources(args.pool, config, records, time.time())))
    return 0


def show_sources(
    pool: str,
    config: WarmupConfig,
    records: list[tuple[bytes | None, bytes | None]],
    now: float,
) -> list[str]:
    """`show` of every source address in the ledger or the policy, each on its own ramp."""
    seen = {parse_record_key(key)[:2] for key, _value in records if key is not None}
    sources = {s for p, s in seen if p == pool} | set(config.sources) | {config.source} - {""}
    if not sources or any(p == pool and not s for p, s in seen):
        sources.add("")  # the pool sends from its host's own address (or did)
    lines = []
    for source in sorted(sources):
        plan = Plan.of_source(config, source)
        if plan is None:
            lines.append(f"pool {pool} address {source}: warm (no warm-up cap)")
            continue
        usage = sum_usage(plan, pool, records, now, source)
        lines += show_lines(pool, plan, usage, now, source)
    return lines


async def read_ledger(
    settings: KafkaSettings, timeout_s: float = 30.0
) -> list[tuple[bytes | None, bytes | None]]:
    await ensure_topics(settings, control_topics(settings))
    records: list[tuple[bytes | None, bytes | None]] = []
    await read_topic(
        settings,
        WARMUP_TOPIC,
        lambda key, value: records.append((key, value)),
        client_id="mailsluice-warmup-cli",
        timeout_s=timeout_s,
    )
    return records
