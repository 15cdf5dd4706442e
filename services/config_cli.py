"""`mailsluice config docs`: print docs/configuration.md from the settings classes."""

from __future__ import annotations

import argparse

from mailsluice.config import render_docs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("docs", help="print the configuration reference as Markdown")


def run(args: argparse.Namespace) -> int:
    print(render_docs())
    return 0
