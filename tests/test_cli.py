"""The console command: every subcommand exists and answers --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailsluice.cli import COMMANDS, build_parser

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
