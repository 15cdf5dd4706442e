"""`mailsluice policy check FILE...`: validate shaping policies and backoff rule files.

Exit 0 when every file is valid; 1 when any is invalid, printing "FILE:LINE: key: error" for
each error (on stderr); 2 when a file cannot be read. The kind of file is detected (a file with
[[rule]] tables is a backoff rule file) or given with --kind.
"""

from __future__ import annotations

import argparse
import sys
import tomllib

from mailsluice.policy.backoff import validate_rules_text
from mailsluice.policy.shaping import PolicyError, validate_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate shaping policy or backoff rule files",
        description="Validate shaping policy (shaping.toml) or backoff rule (backoff.toml) "
        "files. Exit 0 when valid; otherwise print FILE:LINE: key: error and exit 1.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "--kind",
        choices=("auto", "shaping", "backoff"),
        default="auto",
        help="kind of file (auto: files with [[rule]] tables are backoff rules)",
    )


def detect_kind(text: str) -> str:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "shaping"  # either way the syntax error is reported the same
    return "backoff" if "rule" in data else "shaping"


def check_text(text: str, kind: str = "auto") -> tuple[str, list[PolicyError], str]:
    """(kind, errors, summary) for one file's text."""
    if kind == "auto":
        kind = detect_kind(text)
    if kind == "backoff":
        rules, errors = validate_rules_text(text)
        summary = f"{len(rules)} backoff rules" if rules is not None else ""
        return kind, errors, summary
    policy, errors = validate_text(text)
    summary = ""
    if policy is not None:
        model = policy.model
        summary = (
            f"shaping policy: {len(model.provider)} providers, {len(model.domain)} domains, "
            f"{len(model.pool)} pools"
        )
    return kind, errors, summary


def run(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        try:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{name}: cannot read: {exc}", file=sys.stderr)
            status = 2
            continue
        _kind, errors, summary = check_text(text, args.kind)
        if errors:
            for error in sorted(errors, key=lambda e: e.line):
                print(error.format(name), file=sys.stderr)
            status = max(status, 1)
        else:
            print(f"{name}: ok ({summary})")
    return status
