"""Provider rollup: table-driven checks of the packaged data and of the validator."""

from __future__ import annotations

import pytest

from mailsluice.policy.rollup import RollupError, default_rollup, parse_rollup, shard_of


@pytest.mark.parametrize(
    ("recipient", "key"),
    [
        ("a@gmail.com", "google"),
        ("a@GoogleMail.com", "google"),
        ("a@hotmail.com", "microsoft"),
        ("a@outlook.com", "microsoft"),
        ("a@live.com", "microsoft"),
        ("a@msn.com", "microsoft"),
        ("a@yahoo.com", "yahoo"),
        ("a@ymail.com", "yahoo"),
        ("a@aol.com", "yahoo"),
        ("a@icloud.com", "apple"),
        ("a@me.com", "apple"),
        ("a@mac.com", "apple"),
        ("a@Example.ORG", "example.org"),
        ("a@sub.example.org", "sub.example.org"),
    ],
)
def test_routing_keys_of_known_and_unknown_domains(recipient: str, key: str) -> None:
    assert default_rollup().routing_key(recipient) == key


def test_domain_hosted_by_a_provider_rolls_up_by_mx() -> None:
    rollup = default_rollup()
    assert rollup.routing_key("a@corp.example", ["aspmx.l.google.com."]) == "google"
    assert (
        rollup.routing_key("a@corp.example", ["corp-example.mail.protection.outlook.com"])
        == "microsoft"
    )
    # a suffix must match on a label boundary
    assert rollup.routing_key("a@corp.example", ["notgoogle.com"]) == "corp.example"


def test_shards_are_stable_and_spread() -> None:
    rollup = parse_rollup({"providers": {"google": {"domains": ["gmail.com"], "shards": 4}}})
    keys = {rollup.routing_key(f"user{i}@gmail.com") for i in range(200)}
    assert keys == {"google#0", "google#1", "google#2", "google#3"}
    assert rollup.routing_key("X@gmail.com") == rollup.routing_key("x@gmail.com")
    assert shard_of("x@gmail.com", 4) == shard_of("x@gmail.com", 4)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"providers": {"Bad Name": {"domains": []}}},
        {"providers": {"p": {"domains": "gmail.com"}}},
        {"providers": {"p": {"domains": ["not a domain"]}}},
        {"providers": {"p": {"domains": [], "shards": 0}}},
        {"providers": {"p": {"domains": [], "colour": "red"}}},
        {"providers": {"p": {"domains": ["a.com"]}, "q": {"domains": ["a.com"]}}},
    ],
)
def test_invalid_rollup_data_is_refused(data: dict) -> None:
    with pytest.raises(RollupError):
        parse_rollup(data)


def test_packaged_data_has_no_domain_twice() -> None:
    seen: set[str] = set()
    for provider in default_rollup().providers:
        assert not seen & set(provider.domains)
        seen |= set(provider.domains)
    assert len(seen) > 30


def test_provider_names_match_the_shaping_policy() -> None:
    """Every rolled-up routing key has shaping limits of its own on the delivery side."""
    import tomllib
    from importlib import resources

    shaping = tomllib.loads(
        resources.files("mailsluice.policy").joinpath("shaping.toml").read_text()
    )
    assert {p.name for p in default_rollup().providers} <= set(shaping["provider"])


def test_yahoo_japan_is_its_own_destination() -> None:
    assert default_rollup().routing_key("a@yahoo.co.jp") == "yahoo.co.jp"
