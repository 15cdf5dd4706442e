"""Replies files: validation errors with their line and key, loading, the compiled form."""

from __future__ import annotations

import re

import pytest
from support.paths import REPO

from mailsluice.policy.replies import (
    ReplyClass,
    default_replies,
    load_replies,
    load_replies_text,
    validate_replies_text,
)
from mailsluice.policy.shaping import PolicyInvalid, shipped_text

OK = '[[rule]]\nname = "ok"\ntext = "fine"\nclass = "rate"\n'

# (file text, line, key, message fragment)
INVALID = [
    (
        '[[rule]]\nname = "a"\ntext = "(unclosed"\nclass = "rate"\n',
        3,
        "rule[0].text",
        "invalid regular expression",
    ),
    (
        '[[rule]]\nname = "a"\ncode = "^4("\nclass = "rate"\n',
        3,
        "rule[0].code",
        "invalid regular expression",
    ),
    ('[[rule]]\nname = "a"\ntext = "x"\nclass = "slow"\n', 4, "rule[0].class", "'rate'"),
    ('[[rule]]\nname = "a"\ntext = "x"\n', 1, "rule[0].class", "Field required"),
    (OK + OK, 6, "rule[1].name", "duplicate name ok"),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\nmin_block = "10m"\n',
        5,
        "rule[0].min_block",
        "min_block belongs to block rules, not to class rate",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nclass = "block"\nmin_block = "a while"\n',
        5,
        "rule[0].min_block",
        "invalid duration",
    ),
    (
        '[[rule]]\nname = "a"\nclass = "rate"\n',
        1,
        "rule[0]",
        "at least one of code, enhanced, text",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nphase = ["quit"]\nclass = "rate"\n',
        4,
        "rule[0].phase[0]",
        "'greeting'",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nphase = []\nclass = "rate"\n',
        4,
        "rule[0].phase",
        "at least 1 item",
    ),
    (
        '[[rule]]\nname = "A b"\ntext = "x"\nclass = "rate"\n',
        2,
        "rule[0].name",
        "should match pattern",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\naction = "suspend"\n',
        5,
        "rule[0].action",
        "Extra inputs",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\nbounce = "yes"\n',
        5,
        "rule[0].bounce",
        "valid boolean",
    ),
    ("version = 2\n" + OK, 1, "version", "Input should be 1"),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\nexamples = [\n  "421 4.7.0 x",\n'
        '  "slow down please",\n]\n',
        5,
        "rule[0].examples",
        "example 1 is not a reply",
    ),
    (
        # The first rule shadows the second's example: found, at the examples line.
        '[[rule]]\nname = "wide"\ntext = "slow"\nclass = "rate"\n\n[[rule]]\nname = "narrow"\n'
        'text = "slow down"\nclass = "server"\nexamples = ["451 4.3.0 slow down"]\n',
        10,
        "rule[1].examples[0]",
        "example 0 classifies as wide (rate)",
    ),
    (
        '[[rule]]\nname = "a"\ntext = "x"\nphase = ["greeting"]\nclass = "rate"\n'
        'examples = ["421 4.7.0 y"]\n',
        6,
        "rule[0].examples[0]",
        "example 0 classifies as code:4.7 (reputation)",
    ),
    ('[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\nnote = = 1\n', 5, "", "TOML syntax"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), INVALID)
def test_validation_errors_carry_line_and_key(text, line, key, fragment):
    rules, errors = validate_replies_text(text)
    assert rules is None
    assert any(e.line == line and e.key == key and fragment in e.message for e in errors), errors
    with pytest.raises(PolicyInvalid):
        load_replies_text(text)


def test_every_error_of_a_file_is_reported():
    text = (
        '[[rule]]\nname = "a"\ntext = "(x"\nclass = "rate"\n\n'
        '[[rule]]\nname = "b"\ntext = "y"\nclass = "nope"\n\n'
        '[[rule]]\nname = "c"\ntext = "z"\nclass = "server"\nmin_block = "1m"\n'
    )
    _rules, errors = validate_replies_text(text)
    assert [(e.line, e.key) for e in errors] == [
        (3, "rule[0].text"),
        (9, "rule[1].class"),
        (15, "rule[2].min_block"),
    ]


def test_a_full_rule_compiles():
    (rule,) = load_replies_text(
        """version = 1

[[rule]]
name = "isp-blocked-for-ten-minutes"
provider = "isp"
code = '^4'
enhanced = '^4\\.7\\.'
text = 'blocked for 10 minutes'
phase = ["greeting", "mail"]
class = "block"
bounce = true
min_block = "10m"
note = "the text names its own duration"
examples = ["421 4.7.0 You are blocked for 10 minutes"]
"""
    )
    assert rule.name == "isp-blocked-for-ten-minutes"
    assert rule.provider == "isp"
    assert rule.phases == frozenset({"greeting", "mail"})
    assert (rule.cls, rule.bounce, rule.min_block) == (ReplyClass.BLOCK, True, 600.0)
    assert rule.text is not None and rule.text.search("BLOCKED FOR 10 MINUTES")  # ignores case
    assert rule.code is not None and not rule.code.flags & re.IGNORECASE  # codes match as written
    assert rule.examples == ("421 4.7.0 You are blocked for 10 minutes",)


def test_examples_are_optional_and_an_empty_file_is_valid():
    assert load_replies_text(OK)[0].examples == ()
    assert load_replies_text("version = 1\n") == []


def test_load_replies_reads_a_file_or_the_shipped_pack(tmp_path):
    path = tmp_path / "replies.toml"
    path.write_text(OK)
    assert [r.name for r in load_replies(str(path))] == ["ok"]
    assert load_replies(None) == list(default_replies())
    assert load_replies("") == list(default_replies())


def test_the_shipped_pack_validates():
    rules, errors = validate_replies_text(shipped_text("replies.toml"))
    assert errors == []
    assert rules is not None
    assert [r.name for r in rules] == [r.name for r in default_replies()]


def test_the_documented_example_is_a_valid_file():
    doc = (REPO / "docs" / "policy.md").read_text()
    block = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (rule,) = load_replies_text(block)
    assert (rule.name, rule.cls, rule.phases) == (
        "any-too-many-connections",
        ReplyClass.CONNECTIONS,
        frozenset({"greeting", "ehlo"}),
    )
