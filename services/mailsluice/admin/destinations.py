"""`mailsluice destinations list|suspend|resume|retry-now`: operate on destinations.

Commands go to the compacted topic mailsluice.control (see contracts/control.py), which every
worker of the pool follows, so they reach whichever worker owns the destination now or later.
`list` reads that topic to its end: what workers last reported (state, queue, rate, last error),
commands they have not reported on yet, and what retry movers hold (destinations_table.py says
how each row is made, and shows how old it is). A command names a destination the policy knows
or a domain of its own (destination_keys.py); anything else is refused with a suggestion.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import time

from aiokafka.errors import KafkaError

from mailsluice.admin.destination_keys import Destinations
from mailsluice.admin.destinations_table import render
from mailsluice.config import load
from mailsluice.contracts.control import Command, ControlState, command_key, encode_command
from mailsluice.contracts.topics import CONTROL_TOPIC, DEFAULT_POOL
from mailsluice.kafka.admin import control_topics, ensure_topics
from mailsluice.kafka.clients import make_producer
from mailsluice.kafka.compacted import read_topic
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.policy.rollup import RollupError, load_rollup
from mailsluice.policy.shaping import PolicyInvalid, load_policy
from mailsluice.policy.units import parse_duration

EXIT_KAFKA = 1
EXIT_USAGE = 2
# The workers' policy setting (delivery/shaping/settings.py), read here as its default
POLICY_ENV = "MAILSLUICE_SHAPING_POLICY_FILE"

__all__ = ["add_arguments", "build_command", "read_state", "render", "run", "send_command"]


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
        cmd.add_argument(
            "--policy",
            default=os.environ.get(POLICY_ENV, ""),
            help=f"shaping policy naming the destinations (default: ${POLICY_ENV}, the "
            "workers' setting, else the shipped one)",
        )
        cmd.add_argument(
            "--rollup", default="", help="provider rollup file (default: the shipped one)"
        )
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
    key = normal_key(args.key)
    return Command(args.pool, key, args.action, until, args.reason, now, _user())


def normal_key(key: str) -> str:
    return key.strip().lower().rstrip(".")


def refusal(args: argparse.Namespace, known: frozenset[str] = frozenset()) -> str | None:
    """Why the command's key is no destination (None: it is one). The policy knows every key
    that is not a domain (a pool's overrides name only the file's providers, and domains);
    `known` are keys accepted too (those of earlier commands, which a resume may undo)."""
    policy = load_policy(args.policy or None)
    destinations = Destinations(policy, load_rollup(args.rollup or None), args.pool)
    return destinations.refusal(normal_key(args.key), known)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def run(args: argparse.Namespace) -> int:
    why = None
    if args.action != "list":
        try:
            if args.action == "suspend":
                parse_duration(args.duration)
            why = refusal(args)
        except (ValueError, PolicyInvalid, RollupError, OSError) as exc:
            print(f"mailsluice destinations: {exc}", file=sys.stderr)
            return EXIT_USAGE
        # a suspend names a destination of the policy or a domain; a resume or retry-now may
        # also undo an earlier command for any key (checked against the topic)
        if why is not None and args.action == "suspend":
            print(f"mailsluice destinations: {why}", file=sys.stderr)
            return EXIT_USAGE
    settings = load(KafkaSettings)
    try:
        return asyncio.run(asyncio.wait_for(_run(settings, args, why), args.timeout))
    except (KafkaError, TimeoutError, OSError, RuntimeError) as exc:
        detail = str(exc) or type(exc).__name__
        print(f"mailsluice destinations: Kafka at {settings.bootstrap}: {detail}", file=sys.stderr)
        return EXIT_KAFKA


async def _run(settings: KafkaSettings, args: argparse.Namespace, why: str | None) -> int:
    await ensure_topics(settings, control_topics(settings))
    if args.action == "list":
        state = await read_state(settings, args.timeout)
        for line in render(state, args.pool, as_json=args.json, now=time.time()):
            print(line)
        return 0
    if why is not None:
        state = await read_state(settings, args.timeout)
        why = refusal(args, frozenset(k for p, k in state.commands if p == args.pool))
        if why is not None:
            print(f"mailsluice destinations: {why}", file=sys.stderr)
            return EXIT_USAGE
    cmd = build_command(args, time.time())
    await send_command(settings, cmd)
    print(
        f"{cmd.action} {cmd.pool}/{cmd.key}" + (f" until {_when(cmd.until)}" if cmd.until else "")
    )
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


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
