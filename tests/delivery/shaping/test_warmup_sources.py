"""Warm-up per source address: each address of a pool has its own day, caps and ledger records;
a cold address over its cap leaves the others sending. Simulated clocks throughout."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from support.paths import REPO

from mailsluice.admin import warmup as warmup_cli
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.settings import ShapingSettings, build_shaper
from mailsluice.delivery.shaping.steering import Fixed
from mailsluice.delivery.shaping.warmup import PoolWarmup, WarmupTracker
from mailsluice.metrics.shaping import Shaping as shaping_metrics
from mailsluice.policy.shaping import load_policy_text, validate_text
from mailsluice.policy.warmup import Plan
from mailsluice.policy.warmup_config import WarmupConfig

START = date(2026, 11, 1)
COLD, WARM = "192.0.2.10", "192.0.2.11"
NOON = datetime(2026, 11, 1, 12, 0, tzinfo=UTC).timestamp()
NEXT_DAY_S = 12 * 3600.0  # from noon to the next day's cap
LATER = 100.0  # monotonic seconds after a burst of sends: the lanes' rates have room again

POLICY = """
[defaults]
connection_limit = 10
max_message_rate = "100000/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"
"""


def config(**fields) -> WarmupConfig:
    return WarmupConfig(start=START, schedule="custom", table={"1": 5, "2": 8}, **fields)


def shaper_for(cfg: WarmupConfig, sources, clock: list[float]) -> PolicyShaper:
    """A pool sending from `sources`, each with the warm-up `cfg` gives it, on `clock`."""
    trackers = {}
    for source in sources:
        plan = Plan.of_source(cfg, source)
        if plan is not None:
            trackers[source] = WarmupTracker("p", plan, source=source)
    warmup = PoolWarmup(trackers, tuple(sources)) if trackers else None
    policy = load_policy_text(POLICY)
    return PolicyShaper(
        policy, "p", sources=sources, warmup=warmup, adaptive=False, wall=lambda: clock[0]
    )


def send_all(shaper: PolicyShaper, key: str, count: int, start: float = 0.0) -> list[str]:
    """Start up to `count` sends to `key`, a millisecond apart (the lanes' rate allows that),
    each finishing at once; the sources they used."""
    used = []
    for n in range(count):
        now = start + n * 0.001
        source = shaper.try_start(key, now)
        if source is None:
            break
        shaper.finished(key, source, now)
        used.append(source)
    return used


# --- configuration ---------------------------------------------------------------------------


def test_each_address_starts_on_the_pool_date_unless_given_its_own_or_warm() -> None:
    cfg = config(sources={COLD: "2026-11-20", WARM: "warm", "2001:DB8::1": START})
    assert cfg.start_of(COLD) == date(2026, 11, 20)
    assert cfg.start_of(WARM) is None
    assert cfg.start_of("2001:db8::1") == START  # addresses are compared in normal form
    assert cfg.start_of("192.0.2.99") == START  # not listed: the pool's start
    assert cfg.start_of("") == START  # a pool without addresses: its one sender warms up
    plan = Plan.of_source(cfg, COLD)
    assert plan is not None and plan.start == date(2026, 11, 20)
    assert Plan.of_source(cfg, WARM) is None


def test_the_single_source_field_names_the_one_address_that_warms_up() -> None:
    cfg = config(source=COLD)
    assert cfg.start_of(COLD) == START
    assert cfg.start_of(WARM) is None
    assert cfg.start_of("") == START  # a pool without addresses keeps its warm-up
    with pytest.raises(ValidationError, match="either source"):
        config(source=COLD, sources={WARM: "warm"})


DEFAULTS = """
[defaults]
connection_limit = 1
max_message_rate = "1/s"
max_deliveries_per_connection = 1
max_recipients_per_transaction = 1
tls = "opportunistic"
"""


def test_policy_check_names_a_bad_address_or_start() -> None:
    head = (
        DEFAULTS
        + """
[pool.bulk.warmup]
start = 2026-11-01
"""
    )
    ok = head + '[pool.bulk.warmup.sources]\n"192.0.2.10" = 2026-11-20\n"192.0.2.11" = "warm"\n'
    assert validate_text(ok)[1] == []
    _policy, errors = validate_text(head + 'sources = {"mail.example.com" = "warm"}\n')
    assert [(e.line, e.key) for e in errors] == [(11, "pool.bulk.warmup.sources")]
    assert "'mail.example.com' is not an IP address" in errors[0].message
    _policy, errors = validate_text(head + 'sources = {"192.0.2.10" = "hot"}\n')
    assert len(errors) == 1 and 'start date (YYYY-MM-DD) or "warm"' in errors[0].message
    _policy, errors = validate_text(head + 'source = "192.0.2.300"\n')
    assert len(errors) == 1 and "is not an IP address" in errors[0].message


def test_build_shaper_gives_each_warming_address_a_tracker() -> None:
    overrides = {"warmup": {"start": "2026-11-01", "sources": {WARM: "warm"}}}
    settings = ShapingSettings(pool_overrides=json.dumps(overrides), worker_id="w1")
    shaper = build_shaper(settings, "p", lambda: NOON, sources=(COLD, WARM))
    assert shaper.warmup is not None
    assert list(shaper.warmup.trackers) == [COLD]
    assert shaper.warmup.trackers[COLD].owner == "w1"
    everyone_warm = {"warmup": {"start": "2026-11-01", "source": "192.0.2.99"}}
    settings = ShapingSettings(pool_overrides=json.dumps(everyone_warm))
    assert build_shaper(settings, "p", lambda: NOON, sources=(COLD, WARM)).warmup is None
    # without addresses the pool's one sender warms up, as before
    settings = ShapingSettings(pool_overrides=json.dumps({"warmup": {"start": "2026-11-01"}}))
    shaper = build_shaper(settings, "p", lambda: NOON)
    assert shaper.warmup is not None and list(shaper.warmup.trackers) == [""]


# --- the engine ------------------------------------------------------------------------------


def test_a_warm_address_keeps_sending_after_the_cold_one_spent_its_cap() -> None:
    clock = [NOON]
    shaper = shaper_for(config(sources={WARM: "warm"}), (COLD, WARM), clock)
    used = send_all(shaper, "example.org", 100)
    assert len(used) == 100  # never held: the warm address takes what the cold one cannot
    assert used.count(COLD) == 5  # exactly its cap of day 1
    assert used[:10].count(COLD) == 5  # in turn while it had room
    assert shaper.wait_time("example.org", LATER) == 0.0
    assert shaper.why_held("example.org", LATER)[0] != "warmup"
    assert shaper.estimate_wait("example.org", LATER, 1000) < 1.0
    assert shaper.overflow_pool("example.org", LATER, 1000) == ""
    status = {s.source: s for s in shaper.warmup.status(NOON)} if shaper.warmup else {}
    assert list(status) == [COLD] and status[COLD].scopes["*"].used == 5


def test_every_address_capped_holds_for_warmup_until_the_next_period() -> None:
    clock = [NOON]
    cfg = config(sources={WARM: "2026-10-31"}, over_cap="overflow", overflow_pool="shared")
    shaper = shaper_for(cfg, (COLD, WARM), clock)
    # room of both together: 5 (day 1) + 8 (day 2) messages, then nothing until midnight
    assert shaper.estimate_wait("example.org", 0.0, 12) < 1.0
    assert shaper.estimate_wait("example.org", 0.0, 13) == pytest.approx(NEXT_DAY_S)
    assert shaper.overflow_pool("example.org", 0.0, 12) == ""
    assert shaper.overflow_pool("example.org", 0.0, 13) == "shared"
    used = send_all(shaper, "example.org", 100)
    assert (used.count(COLD), used.count(WARM)) == (5, 8)
    assert shaper.try_start("example.org", LATER) is None
    assert shaper.wait_time("example.org", LATER) == pytest.approx(NEXT_DAY_S)
    assert shaper.estimate_wait("example.org", LATER, 0) == pytest.approx(NEXT_DAY_S)
    assert shaper.why_held("example.org", LATER)[0] == "warmup"
    clock[0] += NEXT_DAY_S  # day 2 for COLD (8), day 3 for WARM: past the table, no cap
    assert shaper.wait_time("example.org", LATER) == 0.0
    used = send_all(shaper, "example.org", 100, start=2 * LATER)
    assert len(used) == 100 and used.count(COLD) == 8


class Blocked(Fixed):
    """A lane whose destination blocks its address for a minute."""

    def wait(self, now: float) -> float:
        return 60.0


def test_held_mail_is_blocked_when_the_addresses_with_room_are_blocked() -> None:
    clock = [NOON]
    shaper = shaper_for(config(sources={WARM: "warm"}), (COLD, WARM), clock)
    send_all(shaper, "example.org", 20)  # the cold address's cap is spent
    for lane in shaper.lanes.of("example.org", LATER):
        if lane.source == WARM:
            lane.steering = Blocked(
                WARM, "example.org", shaper._lane_policy("example.org").ceilings
            )
    assert shaper.why_held("example.org", LATER)[0] == "blocked"


def test_warmup_metrics_name_each_address() -> None:
    clock = [NOON]
    shaper = shaper_for(config(sources={WARM: "warm"}), (COLD, WARM), clock)
    send_all(shaper, "example.org", 3)
    shaping_metrics.export(shaper, LATER)
    labels = {"pool": "p", "source_ip": COLD, "scope": "*", "period": "day"}
    assert REGISTRY.get_sample_value("mailsluice_warmup_used_messages", labels) == 2
    assert REGISTRY.get_sample_value("mailsluice_warmup_cap_messages", labels) == 5
    day = REGISTRY.get_sample_value("mailsluice_warmup_day", {"pool": "p", "source_ip": COLD})
    assert day == 1
    warm = {**labels, "source_ip": WARM}
    assert REGISTRY.get_sample_value("mailsluice_warmup_used_messages", warm) is None


def test_a_send_counts_against_the_address_that_sends() -> None:
    clock = [NOON]
    shaper = shaper_for(config(), (COLD, WARM), clock)
    assert shaper.warmup is not None
    used = send_all(shaper, "example.org", 3)
    trackers = shaper.warmup.trackers
    for source in (COLD, WARM):
        assert trackers[source].status(NOON).scopes["*"].used == used.count(source)
    shaper.warmup.set_share(0.5)  # this worker's share of the pool-wide caps, per address
    assert all(t.caps(None, NOON)["*"] == 2 for t in trackers.values())


# --- the ledger ------------------------------------------------------------------------------


def test_ledger_records_of_each_address_round_trip() -> None:
    clock = [NOON]
    cfg = config(sources={WARM: "2026-10-31"})
    shaper = shaper_for(cfg, (COLD, WARM), clock)
    assert shaper.warmup is not None
    send_all(shaper, "example.org", 7)
    records = shaper.warmup.records()
    assert sorted(k.decode() for k, _v in records) == [f"p/{COLD}/*@0", f"p/{WARM}/*@0"]
    again = shaper_for(cfg, (COLD, WARM), clock)
    assert again.warmup is not None
    for key, value in records:
        assert again.warmup.restore(key, value)
    before = {s.source: s.scopes["*"].used for s in shaper.warmup.status(NOON)}
    after = {s.source: s.scopes["*"].used for s in again.warmup.status(NOON)}
    assert after == before and sum(after.values()) == 7
    # another address's record is not this one's; an earlier warm-up's is not either
    other = WarmupTracker("p", Plan.from_config(config()), source="192.0.2.99")
    other.try_take(None, NOON)
    assert not any(again.warmup.restore(k, v) for k, v in other.records())


def test_the_whole_pools_records_of_an_earlier_version_count_for_each_address() -> None:
    cfg = config()
    legacy = WarmupTracker("p", Plan.from_config(cfg))  # one warm-up for the pool: source ""
    for _ in range(4):
        legacy.try_take(None, NOON)
    warmup = PoolWarmup(
        {s: WarmupTracker("p", Plan.from_config(cfg), source=s, inherits="") for s in (COLD, WARM)},
        (COLD, WARM),
    )
    for key, value in legacy.records():
        assert warmup.restore(key, value)
    assert [t.remaining(None, NOON) for t in warmup.trackers.values()] == [1, 1]
    assert {k.decode().split("/")[1] for k, _v in warmup.records()} == {COLD, WARM}


def test_cli_show_prints_each_address() -> None:
    cfg = config(sources={WARM: "warm"})
    cold = WarmupTracker("p", Plan.from_config(cfg), source=COLD)
    for _ in range(3):
        cold.try_take(None, NOON)
    lines = warmup_cli.show_sources("p", cfg, list(cold.records()), NOON)
    assert lines[0] == f"pool p address {COLD}: warm-up day 1 (started 2026-11-01)"
    assert "used this day: 3" in lines[1]
    assert f"pool p address {WARM}: warm (no warm-up cap)" in lines


def test_the_documented_example_is_valid() -> None:
    doc = (REPO / "docs" / "policy.md").read_text()
    section = doc.split("## Warm-up: ", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    policy, errors = validate_text(DEFAULTS + example)
    assert errors == [] and policy is not None
    cfg = policy.warmup("bulk")
    assert cfg is not None
    assert cfg.start_of("192.0.2.11") == date(2026, 11, 20) and cfg.start_of("192.0.2.12") is None
