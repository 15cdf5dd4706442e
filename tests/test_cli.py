"""The console command: every subcommand exists, answers --help and has help text, the README
lists it, and its output ends quietly when the reader goes away (`| head`)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.paths import REPO

from mailsluice.cli import COMMANDS, EXIT_BROKEN_PIPE, build_parser, main, reader_gone

MAILSLUICE = Path(sys.executable).parent / "mailsluice"


def test_console_script_lists_every_subcommand() -> None:
    out = subprocess.run(
        [str(MAILSLUICE), "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    for name, _, _ in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    assert "usage: mailsluice " + name in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_subcommand_imports_only_its_own_module() -> None:
    # A module broken at import must not take the other commands down with it.
    code = (
        "import sys; sys.modules['mailsluice.ingest.service'] = None\n"
        "from mailsluice.cli import main\n"
        "try:\n    main(['config', 'docs'])\nexcept SystemExit as e:\n    sys.exit(e.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "# Configuration" in done.stdout


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str | None, argparse.ArgumentParser]]:
    """(path, help in the parent's list, parser) of every subcommand and sub-subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                yield (*path, name), helps.get(name), child
                yield from _parsers(child, (*path, name))


def test_every_command_action_and_argument_has_help_text() -> None:
    found = list(_parsers(build_parser()))
    assert len(found) > len(COMMANDS)  # the walk reached the actions too
    missing = []
    for path, help_text, parser in found:
        if not help_text or not parser.description:
            missing.append(" ".join(path))
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction) and not action.help:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")
    assert missing == []


def test_the_readme_lists_every_command_and_action() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## The `mailsluice` command") :]
    table = table[: table.index("\n## ")]
    rows = [line for line in table.splitlines() if line.startswith("| `mailsluice ")]
    # the first column; `a\\|b` is how a table cell writes "a or b"
    listed = " ".join(row.replace("\\|", "/").split("|")[1] for row in rows)
    missing = []
    for path, _, _parser in _parsers(build_parser()):
        if len(path) == 1:
            if f"`mailsluice {path[0]}" not in listed:
                missing.append(path[0])
        elif not re.search(rf"mailsluice {path[0]} [^`]*\b{re.escape(path[1])}\b", listed):
            missing.append(" ".join(path))
    assert missing == []


# Subcommands that print without Kafka: each must end quietly when its reader goes away.
PRINTING = [
    ["config", "docs"],
    ["warmup", "plan", "--preset", "ses-45-day"],
    ["policy", "check", "services/mailsluice/policy/shaping.toml"],
    ["--help"],
]


@pytest.mark.parametrize("argv", PRINTING, ids=" ".join)
def test_output_into_a_closed_pipe_ends_without_a_traceback(argv: list[str]) -> None:
    # `mailsluice config docs | head`, made deterministic: the reader is gone before the
    # first write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(MAILSLUICE), *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode in (0, EXIT_BROKEN_PIPE)


def test_a_closed_reader_is_told_from_an_open_one() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        assert not reader_gone(stream)
        os.close(read_end)
        assert reader_gone(stream)


def test_a_broken_pipe_that_is_not_the_output_is_still_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mailsluice.admin.config as config_module

    def broken(_args: object) -> int:
        raise BrokenPipeError("a peer's socket")

    monkeypatch.setattr(config_module, "run", broken)
    with pytest.raises(BrokenPipeError):
        main(["config", "docs"])
