"""The campaign ETA (campaigns/eta.py, campaigns/warmup_caps.py), with numbers."""

from __future__ import annotations

import math
from datetime import date

import pytest

from mailsluice.campaigns.eta import UNLIMITED_RATE, Caps, Destination, eta
from mailsluice.campaigns.warmup_caps import (
    PoolCaps,
    combined,
    destinations,
    pool_caps,
    seen_by_destination,
)
from mailsluice.contracts.control import DestinationRow
from mailsluice.contracts.warmup import WarmupUsage
from mailsluice.policy.warmup_config import WarmupConfig

DAY = 86400.0
MIDNIGHT = 20000 * DAY  # a UTC midnight
NOON = MIDNIGHT + DAY / 2


def test_the_slowest_destination_decides() -> None:
    dests = {
        "google": Destination(pending=6000, rate=10.0),  # 600 s
        "yahoo": Destination(pending=300, rate=1.0),  # 300 s
    }
    assert eta(dests, NOON) == pytest.approx(NOON + 600)


def test_nothing_pending_is_done_now_and_a_hold_without_end_is_unknown() -> None:
    assert eta({}, NOON) == NOON
    assert eta({"g": Destination(pending=0, rate=0.0)}, NOON) == NOON
    assert eta({"g": Destination(pending=1, rate=1.0, resumes=math.inf)}, NOON) is None
    assert eta({"g": Destination(pending=1, rate=0.0)}, NOON) is None


def test_the_rate_is_shared_with_the_rest_of_the_destinations_queue() -> None:
    # 100 of the campaign among 1,000 queued at 2/s: done with the queue, after 500 s
    assert eta({"g": Destination(pending=100, rate=2.0, queued=1000)}, NOON) == NOON + 500


def test_a_suspension_counts_from_its_end() -> None:
    dest = Destination(pending=100, rate=1.0, resumes=NOON + 3600)
    assert eta({"g": dest}, NOON) == NOON + 3600 + 100


def test_an_unknown_or_unlimited_rate_is_assumed() -> None:
    n = int(UNLIMITED_RATE * 10)
    assert eta({"g": Destination(pending=n)}, NOON) == pytest.approx(NOON + 10)
    assert eta({"g": Destination(pending=n, rate=math.inf)}, NOON) == pytest.approx(NOON + 10)


def test_a_daily_warmup_cap_pushes_the_rest_to_the_next_days() -> None:
    # 1,000 today at most (300 left), then 500, then 1,000 a day; 10/s
    caps = Caps(today=300, next_days=(500, 1000))
    dest = Destination(pending=1500, rate=10.0, caps=caps)
    # 300 today, 500 tomorrow, the last 700 on the day after at 10/s: 70 s after midnight
    assert eta({"g": dest}, NOON) == MIDNIGHT + 2 * DAY + 70


def test_the_rate_limits_a_day_as_well() -> None:
    # 0.01/s: 432 by midnight, the other 568 in 56,800 s the next day
    dest = Destination(pending=1000, rate=0.01)
    assert eta({"g": dest}, NOON) == pytest.approx(MIDNIGHT + DAY + 56800)
    assert eta({"g": Destination(pending=10**9, rate=0.001)}, NOON) is None  # past the horizon


def test_a_pool_cap_is_shared_by_the_destinations() -> None:
    dests = {"a": Destination(pending=600, rate=100.0), "b": Destination(pending=200, rate=100.0)}
    # 400 a day for both: a gets 300 and b 100 on day 0, then 300/100 -> b done day 1
    pool = Caps(today=400, next_days=(400,))
    assert eta(dests, NOON, pool) == pytest.approx(MIDNIGHT + DAY + 3.0)


def test_workers_rows_sum_by_destination_and_a_suspension_holds_it() -> None:
    rows = [
        DestinationRow("google#0", "normal", queued=10, rate=2.0, source="192.0.2.1"),
        DestinationRow("google#1", "normal", queued=5, rate=3.0, source="192.0.2.2"),
        DestinationRow("yahoo", "suspended", queued=1, rate=1.0, until=NOON + 60),
        DestinationRow("aol", "suspended", rate=1.0),
    ]
    seen = seen_by_destination(rows)
    assert (seen["google"].rate, seen["google"].queued) == (5.0, 15)
    assert seen["yahoo"].resumes == NOON + 60 and seen["aol"].resumes == math.inf
    dests = destinations({"google": 30, "yahoo": 2, "new.test": 1}, seen, {})
    assert dests["google"] == Destination(pending=30, rate=5.0, queued=15)
    assert dests["new.test"].rate is None
    assert eta(dests, NOON) == NOON + 60 + 2.0


def test_pool_caps_sum_the_warming_addresses_and_subtract_todays_usage() -> None:
    today = date.fromordinal(date(1970, 1, 1).toordinal() + int(NOON // DAY))
    config = WarmupConfig(
        schedule="custom",
        start=today,
        table={"1": 100, "2": 200, "3": 400},
        providers={"google": {"1": 10, "2": 20}},
        sources={"192.0.2.1": today, "192.0.2.2": today},
    )
    usage = [
        WarmupUsage("bulk", "192.0.2.1", "*@w1", today.isoformat(), MIDNIGHT, 30),
        WarmupUsage("bulk", "192.0.2.1", "*@w2", today.isoformat(), MIDNIGHT, 20),
        WarmupUsage("bulk", "192.0.2.2", "google", today.isoformat(), MIDNIGHT, 4),
        WarmupUsage("bulk", "192.0.2.2", "google", today.isoformat(), MIDNIGHT - DAY, 9),  # old
        WarmupUsage("other", "192.0.2.2", "*@w1", today.isoformat(), MIDNIGHT, 99),
    ]
    caps = pool_caps(config, "bulk", usage, NOON)
    assert caps.pool == Caps(today=50 + 100, next_days=(400, 800, None, None))
    assert caps.providers["google"] == Caps(today=10 + 6, next_days=(40, None, None))
    assert caps.pool.on(7) == math.inf
    # a warm address lifts the cap
    warm = config.model_copy(update={"sources": {"192.0.2.1": today, "192.0.2.2": "warm"}})
    assert pool_caps(warm, "bulk", usage, NOON).pool is None


def test_an_hourly_cap_counts_the_hours_left_today() -> None:
    today = date.fromordinal(date(1970, 1, 1).toordinal() + int(NOON // DAY))
    config = WarmupConfig(
        schedule="custom", start=today, table={"1": 10, "2": 20}, period="hour", source=""
    )
    usage = [WarmupUsage("p", "", "*@w", today.isoformat(), NOON, 4)]
    caps = pool_caps(config, "p", usage, NOON + 60)
    # 6 left this hour, 11 more hours of 10; tomorrow 20 x 24; then no cap
    assert caps.pool == Caps(today=6 + 110, next_days=(480, None, None))


def test_caps_of_several_pools_add_up() -> None:
    a = PoolCaps(pool=Caps(10, (20, 30)), providers={"google": Caps(1, (2,)), "aol": Caps(5)})
    b = PoolCaps(pool=Caps(100, (200,)), providers={"google": Caps(3, (4, 5))})
    both = combined([a, b])
    assert both.pool == Caps(110, (220, 230))  # b's last day repeats
    assert both.providers == {"google": Caps(4, (6, 7))}  # b has no aol cap: none in all
    assert combined([a, PoolCaps()]) == PoolCaps()
    assert combined([a]) is a
