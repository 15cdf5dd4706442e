"""`mailsluice policy check FILE`: exit codes and FILE:LINE: key: error output."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import mailsluice.policy
from mailsluice.admin import policy as check
from mailsluice.policy.backoff import validate_rules_text
from mailsluice.policy.shaping import shipped_text

SHIPPED = Path(mailsluice.policy.__file__).parent


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mailsluice policy")
    check.add_arguments(parser)
    return check.run(parser.parse_args(list(argv)))


@pytest.mark.parametrize("name", ["shaping.toml", "backoff.toml", "replies.toml"])
def test_shipped_files_are_valid(name, capsys):
    assert run("check", str(SHIPPED / name)) == 0
    assert ": ok (" in capsys.readouterr().out


def test_invalid_shaping_file_reports_line_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        shipped_text("shaping.toml").replace(
            "[provider.yahoo]\n", '[provider.yahoo]\nconnection_limit = "many"\n'
        )
    )
    assert run("check", str(bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "many" in text)
    assert err == [
        f"{bad}:{line}: provider.yahoo.connection_limit: Input should be a valid integer"
        ", unable to parse string as an integer"
    ]


def test_invalid_backoff_file_reports_each_error(tmp_path, capsys):
    bad = tmp_path / "rules.toml"
    bad.write_text(
        """version = 1

[[rule]]
name = "ok"
text = "fine"
action = "suspend"
duration = "1h"

[[rule]]
name = "broken-regex"
text = "(unclosed"
action = "suspend"
duration = "1h"

[[rule]]
name = "no-duration"
text = "x"
action = "throttle"
rate_factor = 0.5

[[rule]]
name = "bad-trigger"
text = "y"
trigger = "sometimes"
action = "bounce"
"""
    )
    assert run("check", str(bad)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{bad}:11: rule[1].text: invalid regular expression")
    assert err[1] == f"{bad}:15: rule[2]: action throttle needs a duration"
    assert err[2].startswith(f"{bad}:24: rule[3].trigger: invalid trigger 'sometimes'")
    assert len(err) == 3


# (rules text, line, key, fragment) for the backoff validator
BACKOFF_INVALID = [
    (
        '[[rule]]\nname = "a"\naction = "suspend"\nduration = "1h"\n',
        1,
        "rule[0]",
        "at least one of code, enhanced, text",
    ),
    ('[[rule]]\nname = "a"\ntext = "x"\naction = "explode"\n', 4, "rule[0].action", "'suspend'"),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "throttle"\nduration = "1h"\n',
        1,
        "rule[0]",
        "throttle needs rate",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "suspend"\nduration = "1h"\nrate = "1/s"\n',
        1,
        "rule[0]",
        "belong to throttle",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "throttle"\nduration = "1h"\nrate = "1/s"\n'
        "rate_factor = 0.5\n",
        1,
        "rule[0]",
        "not both",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "throttle"\nduration = "1h"\nrate_factor = 2\n',
        6,
        "rule[0].rate_factor",
        "less than or equal to 1",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "suspend"\nduration = "ages"\n',
        5,
        "rule[0].duration",
        "invalid duration",
    ),
    (
        '[[rule]]\nname = "Bad Name"\ntext = "x"\naction = "bounce"\n',
        2,
        "rule[0].name",
        "should match pattern",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\n[[rule]]\nname = "a"\ntext = "y"\n'
        'action = "bounce"\n',
        6,
        "rule[1].name",
        "duplicate name a",
    ),
    (
        '[defaults]\nrecovery_step = "soon"\n[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\n',
        2,
        "defaults.recovery_step",
        "invalid duration",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\ncolour = "red"\n',
        5,
        "rule[0].colour",
        "Extra inputs",
    ),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), BACKOFF_INVALID)
def test_backoff_validation_errors(text, line, key, fragment):
    rules, errors = validate_rules_text(text)
    assert rules is None
    assert any(e.line == line and e.key == key and fragment in e.message for e in errors), errors


def test_kind_detection_and_override(tmp_path, capsys):
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\n')
    assert run("check", str(rules)) == 0
    assert "1 backoff rules" in capsys.readouterr().out
    assert run("check", "--kind", "shaping", str(rules)) == 1
    assert "defaults" in capsys.readouterr().err
    assert run("check", "--kind", "replies", str(rules)) == 1
    assert "rule[0].class: Field required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\n', "replies"),
        ('[[rule]]\nname = "a"\ntext = "x"\n', "replies"),
        ('[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\nclass = "rate"\n', "replies"),
        ('[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\n', "backoff"),
        ("rule = 3\n", "replies"),
        ("[defaults]\n", "shaping"),
        ("not toml [\n", "shaping"),
    ],
)
def test_detect_kind(text, kind):
    assert check.detect_kind(text) == kind


def test_replies_file_checked_with_lines(tmp_path, capsys):
    good = tmp_path / "replies.toml"
    good.write_text(
        '[[rule]]\nname = "a"\nprovider = "acme"\ntext = "slow down"\nclass = "rate"\n'
        'examples = ["450 4.7.1 slow down"]\n'
    )
    assert run("check", str(good)) == 0
    assert f"{good}: ok (1 reply rules, 1 providers)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\nmin_block = "5m"\n\n'
        '[[rule]]\nname = "a"\ntext = "(y"\nclass = "block"\n'
    )
    assert run("check", str(bad)) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{bad}:5: rule[0].min_block: min_block belongs to block rules, not to class rate",
        f"{bad}:9: rule[1].text: invalid regular expression: missing ), unterminated subpattern "
        "at position 0",
    ]


def test_syntax_error_and_unreadable_file(tmp_path, capsys):
    broken = tmp_path / "broken.toml"
    broken.write_text("[defaults]\nconnection_limit = = 3\n")
    assert run("check", str(broken)) == 1
    assert capsys.readouterr().err.startswith(f"{broken}:2: (file): TOML syntax:")
    assert run("check", str(tmp_path / "missing.toml")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_several_files_worst_status_wins(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults]\n")
    assert run("check", str(SHIPPED / "shaping.toml"), str(bad)) == 1
    out = capsys.readouterr()
    assert "shaping.toml: ok" in out.out
    assert f"{bad}:1: defaults:" in out.err
