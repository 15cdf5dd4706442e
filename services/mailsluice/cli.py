"""The `mailsluice` console command: one subcommand per service or tool.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Collection, Sequence

# (name, module, help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("ingest", "mailsluice.ingest.service", "run the SMTP ingest service"),
    ("delivery", "mailsluice.delivery.service", "run a delivery worker for a pool"),
    ("retry-mover", "mailsluice.delivery.retry.service", "move due retries back to pool queues"),
    ("streams", "mailsluice.streams.service", "run the stream processors (suppressions)"),
    ("sandbox", "mailsluice.sandbox.server", "run the sandbox MX that captures delivered mail"),
    ("suppress", "mailsluice.admin.suppress", "add, remove or list suppressed addresses"),
    ("topics", "mailsluice.admin.topics", "create the project's Kafka topics"),
    ("peek", "mailsluice.admin.peek", "print the newest records of a queue or of the events topic"),
    ("policy", "mailsluice.admin.policy", "validate a shaping or backoff policy file"),
    ("destinations", "mailsluice.admin.destinations", "show, suspend, resume destinations"),
    ("warmup", "mailsluice.admin.warmup", "show warm-up schedules and today's caps"),
    ("config", "mailsluice.admin.config", "show configuration documentation"),
    ("dkim", "mailsluice.admin.dkim", "make DKIM keys, check their DNS records"),
    ("operator", "mailsluice_operator.cli", "run the SendingPool operator (kopf)"),
    ("unsubscribe", "mailsluice.unsubscribe.service", "run the one-click unsubscribe service"),
    ("webhooks", "mailsluice.webhooks.service", "send tenants' events to their webhooks; tools"),
    ("api", "mailsluice.api.service", "run the HTTP API (batch sending, templates)"),
    ("tracker", "mailsluice.tracker.service", "run the open pixel and click redirect service"),
    ("engagement", "mailsluice.admin.engagement", "dry-run report of unengaged addresses"),
)


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommands named in `load` (all when None) import their module,
    so a broken or slow module never stops the others."""
    parser = argparse.ArgumentParser(prog="mailsluice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        child = sub.add_parser(name, help=help_text, description=help_text)
        if load is None or name in load:
            module = importlib.import_module(module_name)
            module.add_arguments(child)
            child.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(load={chosen} if chosen else set()).parse_args(argv)
    result: int = args._module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
