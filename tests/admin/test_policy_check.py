"""`mailsluice policy check FILE`: exit codes and FILE:LINE: key: error output."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import mailsluice.policy
from mailsluice.admin import policy as check
from mailsluice.policy.shaping import shipped_text

SHIPPED = Path(mailsluice.policy.__file__).parent


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mailsluice policy")
    check.add_arguments(parser)
    return check.run(parser.parse_args(list(argv)))


@pytest.mark.parametrize("name", ["shaping.toml", "replies.toml"])
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


def test_a_backoff_file_of_an_earlier_release_is_refused_with_what_to_do(tmp_path, capsys):
    old = tmp_path / "backoff.toml"
    old.write_text(
        'version = 1\n[[rule]]\nname = "ok"\ntext = "fine"\naction = "suspend"\nduration = "1h"\n'
    )
    assert run("check", str(old)) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"{old}:1: rule: a backoff rule file")
    assert "name the class of each reply" in line


def test_kind_detection_and_override(tmp_path, capsys):
    rules = tmp_path / "r.toml"
    rules.write_text('[[rule]]\nname = "a"\ntext = "x"\naction = "bounce"\n')
    assert run("check", str(rules)) == 1
    assert "a backoff rule file" in capsys.readouterr().err
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
        '[[rule]]\nname = "a"\nprovider = "google"\ntext = "slow down"\nclass = "rate"\n'
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


def _shaping_with(extra: str, after: str = "[provider.yahoo]\n") -> str:
    return shipped_text("shaping.toml").replace(after, after + extra, 1)


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            _shaping_with("conection_limit = 3\n"),
            "provider.yahoo.conection_limit",
            "unknown key 'conection_limit' (did you mean connection_limit?)",
        ),
        (
            _shaping_with("max_mesage_rate = 3\n", after="[defaults]\n"),
            "defaults.max_mesage_rate",
            "unknown key 'max_mesage_rate' (did you mean max_message_rate?)",
        ),
        (
            _shaping_with('[domian."example.com"]\nconnection_limit = 2\n', after=""),
            "domian",
            "unknown key 'domian' (did you mean domain?)",
        ),
        (
            '[[rule]]\nname = "a"\nprovder = "google"\ntext = "x"\nclass = "rate"\n',
            "rule[0].provder",
            "unknown key 'provder' (did you mean provider?)",
        ),
        (
            '[[rule]]\nname = "a"\ntext = "x"\nclas = "rate"\n',
            "rule[0].clas",
            "unknown key 'clas' (did you mean class?)",
        ),
        (
            '[[rule]]\nname = "a"\ntext = "x"\nclass = "rate"\nzzz = 1\n',
            "rule[0].zzz",
            "unknown key 'zzz' (allowed here: bounce, class, code, enhanced, examples, min_block, "
            "name, note, phase, provider, text)",
        ),
    ],
)
def test_a_misspelt_key_gets_the_closest_allowed_key(tmp_path, capsys, text, key, hint):
    path = tmp_path / "p.toml"
    path.write_text(text)
    assert run("check", str(path)) == 1
    line = next(line for line in capsys.readouterr().err.splitlines() if f": {key}: " in line)
    assert line.endswith(f": {key}: {hint}")


def test_keys_of_a_pools_warmup_are_found_through_the_optional_table():
    from mailsluice.admin.policy_hints import keys_at, parse_dotted
    from mailsluice.policy.shaping import PolicyFile

    path = parse_dotted('pool."bulk.eu".warmup')
    assert path == ["pool", "bulk.eu", "warmup"]
    assert {"schedule", "start", "over_cap"} <= keys_at(PolicyFile, path)
    assert keys_at(PolicyFile, ["pool", "bulk", "nothing"]) == set()


def test_a_reply_rule_for_an_unknown_provider_is_refused_with_a_suggestion(tmp_path, capsys):
    rules = tmp_path / "replies.toml"
    rules.write_text(
        '[[rule]]\nname = "a"\nprovider = "*"\ntext = "x"\nclass = "rate"\n\n'
        '[[rule]]\nname = "b"\nprovider = "gogle"\ntext = "y"\nclass = "rate"\n'
    )
    assert run("check", str(rules)) == 1
    assert capsys.readouterr().err.strip() == (
        f"{rules}:9: rule[1].provider: unknown provider 'gogle' (did you mean google?); "
        "a rule for it never matches"
    )


def test_a_provider_of_a_shaping_policy_checked_alongside_is_known(tmp_path, capsys):
    rules = tmp_path / "replies.toml"
    rules.write_text('[[rule]]\nname = "a"\nprovider = "acme"\ntext = "x"\nclass = "rate"\n')
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(
        shipped_text("shaping.toml") + '\n[provider.acme]\ndomains = ["acme.example"]\n'
    )
    assert run("check", str(rules)) == 1
    assert "unknown provider 'acme'" in capsys.readouterr().err
    assert run("check", str(shaping), str(rules)) == 0
    assert f"{rules}: ok (1 reply rules, 1 providers)" in capsys.readouterr().out
