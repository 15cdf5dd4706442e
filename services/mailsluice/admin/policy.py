"""`mailsluice policy check FILE...`: validate shaping policies and reply class files.

Exit 0 when every file is valid; 1 when any is invalid, printing "FILE:LINE: key: error" for
each error (on stderr); 2 when a file cannot be read. The kind of file is detected (a file with
[[rule]] tables is a replies file) or given with --kind. A backoff rule file of earlier
releases (rules with an `action` and no `class`) is refused with what to do instead: fixed
suspend and throttle actions are gone, rules name the class of a reply.
"""

from __future__ import annotations

import argparse
import sys
import tomllib

from mailsluice.policy.replies import validate_replies_text
from mailsluice.policy.shaping import PolicyError, validate_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate shaping policy or reply class files",
        description="Validate shaping policy (shaping.toml) or reply class (replies.toml) "
        "files. Exit 0 when valid; otherwise print FILE:LINE: key: error and exit 1.",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="policy or replies files")
    check.add_argument(
        "--kind",
        choices=("auto", "shaping", "replies"),
        default="auto",
        help="kind of file (auto: files with [[rule]] tables are replies)",
    )


BACKOFF_GONE = (
    "a backoff rule file (rules with an action): fixed suspend and throttle actions are no "
    "longer read; write a replies file whose rules name the class of each reply "
    "(docs/policy.md), and the controller finds the rate"
)


def detect_kind(text: str) -> str:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "shaping"  # either way the syntax error is reported the same
    rules = data.get("rule")
    if rules is None:
        return "shaping"
    tables = [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []
    backoff = any("action" in r for r in tables) and not any("class" in r for r in tables)
    return "backoff" if backoff else "replies"


def check_text(text: str, kind: str = "auto") -> tuple[str, list[PolicyError], str]:
    """(kind, errors, summary) for one file's text."""
    if kind == "auto":
        kind = detect_kind(text)
    if kind == "replies":
        replies, errors = validate_replies_text(text)
        summary = ""
        if replies is not None:
            providers = {r.provider for r in replies} - {"*"}
            summary = f"{len(replies)} reply rules, {len(providers)} providers"
        return kind, errors, summary
    if kind == "backoff":
        return kind, [PolicyError(1, "rule", BACKOFF_GONE)], ""
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
