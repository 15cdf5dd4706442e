"""`mailsluice destinations list|suspend|resume|retry-now`: operate on destinations.

Commands go to the compacted topic mailsluice.control (see contracts/control.py), which every
worker of the pool follows, so they reach whichever worker owns the destination now or later.
`list` shows what workers last reported there: state, queue, current rate, last error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import math
import sys
import time
from dataclasses import asdict

from aiokafka.errors import KafkaError

from mailsluice.config import load
from mailsluice.contracts.control import (
    Command,
    ControlState,
    DestinationRow,
    command_key,
    encode_command,
)
from mailsluice.contracts.topics import CONTROL_TOPIC, DEFAULT_POOL
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import read_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.units import parse_duration

EXIT_KAFKA = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for Kafka (default: 30)"
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("list", help="show destinations: state, queue, rate, last error")
    show.add_argument("--pool", help="only this pool")
    show.add_argument("--json", action="store_true", help="print JSON lines")
    for name, help_text in (
        ("suspend", "stop sending to a destination (for a time, or until resumed)"),
        ("resume", "end a suspension or throttle of a destination"),
        ("retry-now", "retry a destination's deferred mail now"),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("key", metavar="DESTINATION", help="routing key: provider or domain")
        cmd.add_argument("--pool", default=DEFAULT_POOL, help="pool (default: default)")
        cmd.add_argument("--reason", default="", help="why (shown by list)")
        if name == "suspend":
            cmd.add_argument(
                "--for",
                dest="duration",
                default="30d",
                help="how long, e.g. 2h, 90m (default: 30d, i.e. until resumed)",
            )


def build_command(args: argparse.Namespace, now: float) -> Command:
    until = 0.0
    if args.action == "suspend":
        until = now + parse_duration(args.duration)
    key = args.key.strip().lower()
    return Command(args.pool, key, args.action, until, args.reason, now, _user())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def run(args: argparse.Namespace) -> int:
    if args.action == "suspend":
        try:
            parse_duration(args.duration)
        except ValueError as exc:
            print(f"mailsluice destinations: {exc}", file=sys.stderr)
            return 2
    settings = load(KafkaSettings)
    try:
        return asyncio.run(asyncio.wait_for(_run(settings, args), args.timeout))
    except (KafkaError, TimeoutError, OSError, RuntimeError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"mailsluice destinations: Kafka at {settings.bootstrap}: {detail}", file=sys.stderr)
        return EXIT_KAFKA


async def _run(settings: KafkaSettings, args: argparse.Namespace) -> int:
    await ensure_topics(settings, control_topics(settings))
    if args.action == "list":
        state = await read_state(settings, args.timeout)
        for line in render(state, args.pool, as_json=args.json, now=time.time()):
            print(line)
        return 0
    cmd = build_command(args, time.time())
    await send_command(settings, cmd)
    print(
        f"{cmd.action} {cmd.pool}/{cmd.key}" + (f" until {_when(cmd.until)}" if cmd.until else "")
    )
    return 0


async def send_command(settings: KafkaSettings, cmd: Command) -> None:
    producer = make_producer(settings, max_message_size=1024 * 1024, client_id="mailsluice-ctl")
    await producer.start()
    try:
        await producer.send_and_wait(
            CONTROL_TOPIC, encode_command(cmd), key=command_key(cmd.pool, cmd.key)
        )
    finally:
        await producer.stop()


async def read_state(settings: KafkaSettings, timeout_s: float = 30.0) -> ControlState:
    state = ControlState()
    await read_topic(
        settings, CONTROL_TOPIC, state.apply, client_id="mailsluice-ctl", timeout_s=timeout_s
    )
    return state


def render(state: ControlState, pool: str | None, *, as_json: bool, now: float) -> list[str]:
    rows = state.rows(pool)
    commands = {k: c for k, c in state.commands.items() if pool is None or k[0] == pool}
    if as_json:
        out = []
        for p, worker, row in rows:
            data = asdict(row)
            data["rate"] = None if math.isinf(row.rate) else row.rate
            cmd = commands.get((p, row.key))
            out.append(
                json.dumps(
                    {"pool": p, "worker": worker, **data, "command": cmd.action if cmd else ""},
                    sort_keys=True,
                )
            )
        return out
    header = (
        f"{'POOL':<12} {'DESTINATION':<28} {'SOURCE':<15} {'STATE':<10} {'QUEUED':>7} "
        f"{'ACTIVE':>6} {'RATE/MIN':>9} {'CEIL/MIN':>9} {'CONNS':>5} {'PER-CONN':>8} "
        f"{'CLASS':<14} {'UNTIL':<20} LAST REPLY"
    )
    lines = [header]
    for p, _worker, row in rows:
        lines.append(_row_line(p, row))
    reported = {(p, r.key) for p, _w, r in rows}
    for (p, key), cmd in sorted(commands.items()):
        if (p, key) not in reported and _active(cmd, now):
            until = _when(cmd.until) if cmd.action == "suspend" else ""
            label = "(" + cmd.action + ")"
            lines.append(
                f"{p:<12} {key:<28} {'':<15} {label:<10} {'':>7} {'':>6} {'':>9} {'':>9} "
                f"{'':>5} {'':>8} {'':<14} {until:<20} {cmd.reason}"
            )
    return lines


def _row_line(pool: str, row: DestinationRow) -> str:
    rate = "unlimited" if math.isinf(row.rate) else f"{row.rate * 60:.4g}"
    ceiling = f"{row.ceiling * 60:.4g}" if row.ceiling else "-"
    until = _when(row.until) if row.until else ""
    return (
        f"{pool:<12} {row.key:<28} {row.source or '-':<15} {row.state:<10} {row.queued:>7} "
        f"{row.active:>6} {rate:>9} {ceiling:>9} {row.connections:>5} "
        f"{row.per_connection or '-':>8} {row.last_class or '-':<14} {until:<20} "
        f"{row.last_error[:120]}"
    )


def _active(cmd: Command, now: float) -> bool:
    return cmd.action == "suspend" and cmd.until > now


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
