"""The `mailsluice` console command: one subcommand per service or tool.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their subcommand runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
from collections.abc import Collection, Sequence
from typing import Any, TextIO

# The exit status of a command whose reader went away (`mailsluice config docs | head`): what a
# shell shows for a process killed by SIGPIPE (128 + 13), as `cat` or `grep` would end.
EXIT_BROKEN_PIPE = 141

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
            describe_actions(child)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction[Any]]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def describe_actions(parser: argparse.ArgumentParser) -> None:
    """An action's --help starts with its one-line help when it has no longer description."""
    for action in subparsers(parser):
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            if not child.description and helps.get(name):
                child.description = str(helps[name])
            describe_actions(child)


def reader_gone(stream: TextIO) -> bool:
    """Whether stream is a pipe or socket whose reading end is closed (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return True  # closed or unusable: nothing more can be written to it either


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        try:
            # --help prints from parse_args, then exits: inside too (`mailsluice -h | head -1`)
            args = build_parser(load={chosen} if chosen else set()).parse_args(argv)
            result: int = args._module.run(args)
        finally:
            sys.stdout.flush()  # output is block-buffered into a pipe: this is where it fails
    except BrokenPipeError:
        if not reader_gone(sys.stdout):
            raise  # a socket or pipe of the command's own, not its output: a real error
        # The reader stopped reading (`| head`): stop quietly. Point stdout at /dev/null so the
        # interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return result


if __name__ == "__main__":
    sys.exit(main())
