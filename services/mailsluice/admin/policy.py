"""`mailsluice policy check FILE...`: validate shaping policies and reply class files.

Exit 0 when every file is valid; 1 when any is invalid, printing "FILE:LINE: key: error" for
each error (on stderr); 2 when a file cannot be read. The kind of file is detected (a file with
[[rule]] tables is a replies file) or given with --kind. A misspelt key is answered with the
closest key allowed there ("did you mean"); a reply rule's provider must be one of the shipped
shaping policy's or of a shaping policy checked in the same command. A backoff rule file of earlier
releases (rules with an `action` and no `class`) is refused with what to do instead: fixed
suspend and throttle actions are gone, rules name the class of a reply.
"""

from __future__ import annotations

import argparse
import sys
import tomllib

from mailsluice.admin.policy_hints import unknown_providers, with_key_hints
from mailsluice.policy.replies import RepliesFile, validate_replies_text
from mailsluice.policy.shaping import PolicyError, PolicyFile, shipped_text, validate_text


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


def shaping_providers(text: str) -> set[str]:
    """The provider names of a shaping policy's text (none when it is not valid)."""
    policy, _errors = validate_text(text)
    return set(policy.model.provider) if policy is not None else set()


def check_text(
    text: str, kind: str = "auto", providers: set[str] | None = None
) -> tuple[str, list[PolicyError], str]:
    """(kind, errors, summary) for one file's text; a replies file's providers must be among
    `providers` (default: the shipped shaping policy's)."""
    if kind == "auto":
        kind = detect_kind(text)
    if kind == "replies":
        replies, errors = validate_replies_text(text)
        errors = with_key_hints(errors, RepliesFile)
        summary = ""
        if replies is not None:
            known = (
                shaping_providers(shipped_text("shaping.toml")) if providers is None else providers
            )
            errors += unknown_providers(replies, known, text)
            used = {r.provider for r in replies} - {"*"}
            summary = f"{len(replies)} reply rules, {len(used)} providers"
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
    return kind, with_key_hints(errors, PolicyFile), summary


def read_files(names: list[str]) -> tuple[dict[str, str], int]:
    """The readable files' texts by name, and 2 when one could not be read (said on stderr)."""
    texts: dict[str, str] = {}
    status = 0
    for name in names:
        try:
            with open(name, encoding="utf-8") as fh:
                texts[name] = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{name}: cannot read: {exc}", file=sys.stderr)
            status = 2
    return texts, status


def run(args: argparse.Namespace) -> int:
    texts, status = read_files(args.files)
    # Providers a replies file may name: the shipped policy's, and those of shaping policies
    # checked alongside it (`policy check shaping.toml replies.toml`).
    providers = shaping_providers(shipped_text("shaping.toml"))
    for text in texts.values():
        if args.kind == "shaping" or (args.kind == "auto" and detect_kind(text) == "shaping"):
            providers |= shaping_providers(text)
    for name, text in texts.items():
        _kind, errors, summary = check_text(text, args.kind, providers)
        if errors:
            for error in sorted(errors, key=lambda e: e.line):
                print(error.format(name), file=sys.stderr)
            status = max(status, 1)
        else:
            print(f"{name}: ok ({summary})")
    return status
