"""Shaping policy: the shipped rule pack, merging, MX rollup, units and validation errors."""

from __future__ import annotations

import tomllib
from datetime import date

import pytest

from mailsluice.policy.rollup import default_rollup
from mailsluice.policy.shaping import (
    PolicyInvalid,
    PoolSection,
    Rule,
    default_policy,
    load_policy_text,
    shipped_text,
    validate_text,
)
from mailsluice.policy.tomlpos import key_lines, line_of, split_key
from mailsluice.policy.units import (
    IMMEDIATE,
    RateSpec,
    Threshold,
    parse_duration,
    parse_rate,
    parse_threshold,
)
from mailsluice.policy.warmup_config import WARMUP_PRESETS

# (routing key, MX hosts, provider, connections, messages per connection, tls) — the figures
# cited in shaping.toml.
SHIPPED = [
    ("google", (), "google", 5, 50, "required"),
    ("google#3", (), "google", 5, 50, "required"),
    ("acme.example", ("alt1.aspmx.l.google.com.",), "google", 5, 50, "required"),
    ("acme.example", ("acme-example.mx.smtp.goog",), "google", 5, 50, "required"),
    ("yahoo", (), "yahoo", 10, 20, "opportunistic"),
    ("microsoft", (), "microsoft", 5, 50, "opportunistic"),
    (
        "o365.example",
        ("o365-example.mail.protection.outlook.com",),
        "microsoft",
        5,
        50,
        "opportunistic",
    ),
    ("dane.example", ("dane-example.r-v1.mx.microsoft",), "microsoft", 5, 50, "opportunistic"),
    ("apple", (), "apple", 10, 5, "opportunistic"),
    ("orange", (), "orange", 2, 100, "opportunistic"),
    ("gmx", (), "gmx", 4, 20, "required"),
    ("comcast", (), "comcast", 25, 1000, "required"),
    ("corp.example", ("eu-smtp-inbound-1.mimecast.com",), "mimecast", 10, 100, "opportunistic"),
    ("za.example", ("za-smtp-inbound-1.mimecast.co.za",), "mimecast", 10, 100, "opportunistic"),
    ("cuda.example", ("d123.ess.barracudanetworks.com",), "barracuda", 10, 15, "required"),
    ("kpn.example", ("mx.kpnmail.nl",), "kpn", 10, 10, "required"),
    ("qq.com", (), "qq", 4, 8, "required"),
    ("163.com", (), "netease", 4, 7, "opportunistic"),
    ("yahoo.co.jp", (), None, 2, 20, "opportunistic"),
    ("example.org", ("mx.example.org",), None, 10, 100, "opportunistic"),
    ("zoho", (), "zoho", 10, 100, "opportunistic"),
]


@pytest.mark.parametrize("case", SHIPPED, ids=[f"{c[0]}-{c[2]}" for c in SHIPPED])
def test_shipped_figures(case):
    key, mx, provider, conns, per_conn, tls = case
    shaping = default_policy().resolve(key, mx_hosts=mx)
    assert shaping.provider == provider
    assert shaping.connection_limit == conns
    assert shaping.max_deliveries_per_connection == per_conn
    assert shaping.tls == tls


def test_shipped_defaults_are_kumomtas():
    s = default_policy().resolve("example.org")
    assert s.message_rates == (RateSpec(100, 1),)
    assert s.connection_rate == RateSpec(100, 60)
    assert s.max_recipients_per_transaction == 100
    assert s.burst_of(s.message_rates[0]) == 10  # one per connection
    yjp = default_policy().resolve("yahoo.co.jp")
    assert yjp.message_rates == (RateSpec(10, 1),)
    assert yjp.burst_of(yjp.message_rates[0]) == 2


def test_every_ingest_provider_has_a_shaping_rule_with_the_same_shards():
    providers = default_policy().model.provider
    for prov in default_rollup().providers:
        assert prov.name in providers, prov.name
        assert default_policy().resolve(prov.name).shards == prov.shards


def test_ingest_mx_suffixes_roll_up_to_the_same_provider():
    policy = default_policy()
    for prov in default_rollup().providers:
        for suffix in prov.mx_suffixes:
            assert policy.provider_for("hosted.example", [f"mx1.{suffix}"]) == prov.name


def test_longest_mx_suffix_wins():
    text = """
[defaults]
connection_limit = 1
max_message_rate = "1/s"
max_deliveries_per_connection = 1
max_recipients_per_transaction = 1
tls = "opportunistic"
[provider.broad]
mx_suffixes = ["example.net"]
[provider.narrow]
mx_suffixes = ["mx.example.net"]
"""
    policy = load_policy_text(text)
    assert policy.provider_for("d.example", ["a.mx.example.net"]) == "narrow"
    assert policy.provider_for("d.example", ["a.example.net"]) == "broad"
    assert policy.provider_for("d.example", ["a.notexample.net"]) is None


MERGE = """
[defaults]
connection_limit = 10
max_message_rate = "100/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"

[provider.big]
domains = ["big.example"]
connection_limit = 5
max_message_rate = ["50/s", "100000/day,burst=100"]
shards = 4

[domain."special.example"]
max_deliveries_per_connection = 7

[domain."big.example"]
tls = "required"

[pool.bulk.defaults]
connection_limit = 20
max_recipients_per_transaction = 50

[pool.bulk.provider.big]
connection_limit = 2

[pool.bulk.domain."big.example"]
max_deliveries_per_connection = 3
"""


@pytest.mark.parametrize(
    ("key", "pool", "expected"),
    [
        ("other.example", "", {"connection_limit": 10, "max_recipients_per_transaction": 100}),
        ("other.example", "bulk", {"connection_limit": 20, "max_recipients_per_transaction": 50}),
        ("big", "", {"connection_limit": 5, "shards": 4, "tls": "opportunistic"}),
        ("big#2", "", {"connection_limit": 5, "provider": "big"}),
        # provider beats pool defaults; pool provider beats provider
        ("big", "bulk", {"connection_limit": 2, "max_recipients_per_transaction": 50}),
        ("big.example", "", {"connection_limit": 5, "tls": "required"}),
        ("big.example", "bulk", {"connection_limit": 2, "max_deliveries_per_connection": 3}),
        ("special.example", "bulk", {"connection_limit": 20, "max_deliveries_per_connection": 7}),
        ("other.example", "nosuchpool", {"connection_limit": 10}),
    ],
)
def test_merge_order(key, pool, expected):
    shaping = load_policy_text(MERGE).resolve(key, pool)
    for field, value in expected.items():
        assert getattr(shaping, field) == value, field


def test_multiple_rates_and_stated_burst():
    s = load_policy_text(MERGE).resolve("big")
    assert s.message_rates == (RateSpec(50, 1), RateSpec(100000, 86400, 100))
    assert [s.burst_of(r) for r in s.message_rates] == [5, 100]


def test_pool_override_from_configuration():
    policy = load_policy_text(MERGE)
    overridden = policy.with_pool("bulk", PoolSection(defaults=Rule(connection_limit=1)))
    assert overridden.resolve("other.example", "bulk").connection_limit == 1
    assert overridden.resolve("big", "bulk").connection_limit == 5  # provider still wins
    assert policy.resolve("other.example", "bulk").connection_limit == 20  # original unchanged


def test_warmup_section():
    text = (
        MERGE
        + """
[pool.bulk.warmup]
schedule = "ses-45-day"
start = 2026-11-01
over_cap = "overflow"
overflow_pool = "shared"
"""
    )
    wu = load_policy_text(text).warmup("bulk")
    assert wu is not None
    assert wu.start == date(2026, 11, 1)
    assert wu.overflow_pool == "shared"
    assert load_policy_text(text).warmup("other") is None


BASE = """[defaults]
connection_limit = 10
max_message_rate = "100/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"
"""

# (text, line, key, message fragment)
INVALID = [
    ("[defaults]\nconnection_limit = 0\n", 2, "defaults.connection_limit", "greater than"),
    ("[defaults]\nconnection_limit = 5\n", 1, "defaults", "max_message_rate is required"),
    (
        BASE + '[provider.g]\nmax_message_rate = "5/fortnight"\n',
        8,
        "provider.g.max_message_rate",
        "invalid rate",
    ),
    (
        BASE + '[provider.g]\nmax_message_rate = ["5/s", "x"]\n',
        8,
        "provider.g.max_message_rate",
        "invalid rate",
    ),
    (BASE + "[provider.g]\nconection_limit = 3\n", 8, "provider.g.conection_limit", "Extra inputs"),
    (BASE + '[provider.g]\ntls = "sometimes"\n', 8, "provider.g.tls", "'required'"),
    (
        BASE + '[provider.g]\nmx_suffixes = ["ok.example", "bad host"]\n',
        8,
        "provider.g.mx_suffixes",
        "invalid host name",
    ),
    (
        BASE + '[provider.a]\ndomains = ["x.example"]\n[provider.b]\ndomains = ["x.example"]\n',
        10,
        "provider.b.domains",
        "also listed by a",
    ),
    (BASE + "[provider.g]\nshards = 2000\n", 8, "provider.g.shards", "less than"),
    (
        BASE + '[provider.g]\nstart_rate = "60/min,burst=5"\n',
        8,
        "provider.g.start_rate",
        "no burst",
    ),
    (BASE + "[provider.g]\nstart_connections = 0\n", 8, "provider.g.start_connections", "greater"),
    (
        BASE + '[domain."x.example"]\nmax_connection_rate = "fast"\n',
        8,
        '"domain"."x.example".max_connection_rate'.replace('"domain"', "domain"),
        "invalid rate",
    ),
    (
        BASE + "[pool.p.provider.nope]\nconnection_limit = 1\n",
        7,
        "pool.p.provider.nope",
        "unknown provider",
    ),
    (
        BASE + '[pool.p.warmup]\nschedule = "yolo"\nstart = 2026-01-01\n',
        8,
        "pool.p.warmup.schedule",
        "unknown schedule",
    ),
    (
        BASE + '[pool.p.warmup]\nstart = 2026-01-01\nover_cap = "overflow"\n',
        7,
        "pool.p.warmup",
        "needs overflow_pool",
    ),
    (
        BASE + '[pool.p.warmup]\nschedule = "custom"\nstart = 2026-01-01\n',
        7,
        "pool.p.warmup",
        "needs a table",
    ),
    (
        BASE + '[pool.p.warmup]\nschedule = "custom"\nstart = 2026-01-01\n[pool.p.warmup.table]\n'
        "0 = 10\n",
        10,
        "pool.p.warmup.table",
        "whole number",
    ),
    (BASE + "[pool.p.warmup]\nstart = 2026-13-01\n", 8, "", "TOML syntax"),
    (BASE + '[pool.p.warmup]\nschedule = "custom"\n', 7, "pool.p.warmup.start", "required"),
    ("version = 2\n" + BASE, 1, "version", "Input should be 1"),
    ("[defaults\nx = 1\n", 1, "", "TOML syntax"),
]


@pytest.mark.parametrize(("text", "line", "key", "fragment"), INVALID)
def test_validation_errors_carry_line_and_key(text, line, key, fragment):
    policy, errors = validate_text(text)
    assert policy is None
    assert any(e.line == line and e.key == key and fragment in e.message for e in errors), errors


def test_load_raises_with_all_errors():
    with pytest.raises(PolicyInvalid) as exc:
        load_policy_text("[defaults]\nconnection_limit = 0\ntls = 3\n")
    assert {e.key for e in exc.value.errors} >= {"defaults.connection_limit", "defaults.tls"}


def test_shipped_file_is_valid_toml_with_comments_citing_sources():
    text = shipped_text("shaping.toml")
    data = tomllib.loads(text)
    assert data["defaults"]["connection_limit"] == 10
    for name in data["provider"]:
        header = f"[provider.{name}]"
        before = text[: text.index(header)].rstrip().splitlines()[-1]
        assert before.startswith("#"), f"{name} has no comment citing its figures"


def test_warmup_presets_named_in_policy_exist_in_warmup_module():
    from mailsluice.policy.warmup import PRESETS

    assert set(WARMUP_PRESETS) == set(PRESETS)


# --- units -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/s", RateSpec(100, 1)),
        ("100/min", RateSpec(100, 60)),
        ("10000/h", RateSpec(10000, 3600)),
        ("500/day", RateSpec(500, 86400)),
        ("5/10m", RateSpec(5, 600)),
        ("1/minute", RateSpec(1, 60)),
        ("2.5/s, burst=4", RateSpec(2.5, 1, 4)),
        ("500/day,max_burst=1", RateSpec(500, 86400, 1)),
    ],
)
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "100", "0/s", "1/fortnight", "1/s,burst=0", "-1/s"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("2h", 7200), ("2 hours", 7200), ("30s", 30), ("1d", 86400), (15, 15)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5 fortnights", -1, True])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("immediate", IMMEDIATE),
        ("3/10m", Threshold(3, 600)),
        ("5/h", Threshold(5, 3600)),
        ("2/hr", Threshold(2, 3600)),
        ("1/30s", Threshold(1, 30)),
    ],
)
def test_parse_threshold(text, expected):
    assert parse_threshold(text) == expected


@pytest.mark.parametrize("text", ["soon", "0/h", "3/", "3/0m"])
def test_parse_threshold_rejects(text):
    with pytest.raises(ValueError):
        parse_threshold(text)


# --- TOML positions ----------------------------------------------------------------------


def test_split_key():
    assert split_key('a."b.c".d') == ["a", "b.c", "d"]
    assert split_key(" a . b ") == ["a", "b"]
    assert split_key("a b") is None
    assert split_key('"unterminated') is None


def test_key_lines_tables_arrays_and_dotted_keys():
    text = """# comment
top = 1
[a."b.c"]
x = 1
y.z = 2
[[rule]]
name = "one"
text = '''multi
line'''
[[rule]]
name = "two"
[rule.sub]
q = 1
"""
    lines = key_lines(text)
    assert lines[("top",)] == 2
    assert lines[("a", "b.c")] == 3
    assert lines[("a", "b.c", "x")] == 4
    assert lines[("a", "b.c", "y", "z")] == 5
    assert lines[("rule", 0, "name")] == 7
    assert lines[("rule", 1, "name")] == 11
    assert lines[("rule", 1, "sub", "q")] == 13
    assert line_of(lines, ("rule", 1, "name", 3)) == 11
    assert line_of(lines, ("nothing",)) == 0
