"""Unique opens and clicks (streams/engagement.py) on given events: once per message and
recipient, raw and estimated-human, a click as an open, an every-link burst taken back, an
event replayed after a crash adding its delta again; and the campaign tally's counts and rates
from them (streams/campaigns.py, streams/tally.py)."""

from __future__ import annotations

from typing import Any

from support.tally import engagement_event, published, tallied

from mailsluice.contracts.events import Event, EventType
from mailsluice.streams import engagement
from mailsluice.streams.campaigns import tally

T = 1_000_000.0


def ev(kind: EventType, q: str = "q1", ts: float = T, **kw: Any) -> Event:
    return engagement_event(kind, q, ts, **kw)


def click(link: int, ts: float = T, q: str = "q1", **kw: Any) -> Event:
    return ev(EventType.CLICK, q, ts, link_index=link, link=f"https://x.test/{link}", **kw)


def run(events: list[Event]) -> dict[str, int]:
    """The summed deltas of `events`, on one message state per message and recipient."""
    states: dict[str, engagement.Json] = {}
    totals: dict[str, int] = {}
    for event in events:
        key = engagement.seen_key(event)
        states[key], delta = engagement.observe(states.get(key), event)
        totals = engagement.add(totals, delta)
    return {k: v for k, v in totals.items() if v}


def test_opens_count_once_per_message_and_recipient() -> None:
    proxy = ev(EventType.OPEN, machine="privacy_proxy")
    again = ev(EventType.OPEN, ts=T + 90, recipient=" ANN@x.test")  # the same address
    got = run([proxy, proxy, ev(EventType.OPEN, ts=T + 60), again])
    assert got == {"opens": 1, "opens_human": 1}
    # the same address in another message, another address in the same one: unique again
    other = [ev(EventType.OPEN, "q2"), ev(EventType.OPEN, recipient="bob@x.test")]
    assert run(other) == {"opens": 2, "opens_human": 2}


def test_a_machine_open_is_raw_only() -> None:
    assert run([ev(EventType.OPEN, machine="prefetch")]) == {"opens": 1}


def test_a_click_is_an_open_too_and_counts_once() -> None:
    got = run([click(0), click(0, T + 100), click(1, T + 200)])
    assert got == {"opens": 1, "opens_human": 1, "clicks": 1, "clicks_human": 1}


def test_a_scanner_click_is_raw_only() -> None:
    got = run([click(0, machine="scanner"), click(1, T + 30, machine="too_soon")])
    assert got == {"opens": 1, "clicks": 1}


def test_every_link_within_seconds_takes_the_human_click_back() -> None:
    burst = [click(0), click(1, T + 0.5), click(2, T + 1.0), click(3, T + 1.2)]
    assert run(burst) == {"opens": 1, "clicks": 1, "every_link": 1}
    # out of order across the tracker's replicas: the same
    assert run([burst[2], burst[0], burst[1]]) == {"opens": 1, "clicks": 1, "every_link": 1}


def test_a_burst_keeps_a_human_open_seen_before_it() -> None:
    got = run([ev(EventType.OPEN, ts=T - 600), click(0), click(1, T + 0.5), click(2, T + 1)])
    assert got == {"opens": 1, "opens_human": 1, "clicks": 1, "every_link": 1}


def test_clicks_on_a_few_links_spread_out_stay_human() -> None:
    got = run([click(0), click(1, T + 1), click(2, T + 10), click(0, T + 11)])
    assert got == {"opens": 1, "opens_human": 1, "clicks": 1, "clicks_human": 1}


def test_a_person_clicking_after_the_scanners_burst_counts() -> None:
    burst = [click(0), click(1, T + 0.5), click(2, T + 1.0)]
    got = run([*burst, click(1, T + 3600)])
    assert got == {
        "opens": 1,
        "opens_human": 1,
        "clicks": 1,
        "clicks_human": 1,
        "every_link": 1,
    }


def test_an_event_replayed_after_a_crash_gives_its_delta_again() -> None:
    state, delta = engagement.step(None, click(0), offset=7, partition=2)
    assert delta == {"opens": 1, "opens_human": 1, "clicks": 1, "clicks_human": 1}
    again, replayed = engagement.step(state, click(0), offset=7, partition=2)
    assert again == state and replayed == delta
    _, later = engagement.step(state, click(0, T + 50), offset=8, partition=2)
    assert later == {}
    assert state["p"] == 2 and state["o"] == 7


def test_the_state_stays_small() -> None:
    state: engagement.Json | None = None
    for i in range(50):
        state, _ = engagement.observe(state, click(i, T + i * 0.1))
    assert state is not None and len(state["k"]) <= engagement.EVERY_LINK_LINKS


def test_the_campaign_counts_and_rates() -> None:
    events = [ev(EventType.DELIVERY, f"q{i}", recipient=f"r{i}@x.test") for i in range(10)]
    events += [ev(EventType.OPEN, f"q{i}", recipient=f"r{i}@x.test") for i in range(4)]
    events += [ev(EventType.OPEN, "q9", recipient="r9@x.test", machine="privacy_proxy")]
    events += [click(0, q="q0", recipient="r0@x.test")]
    events += [click(i, T + i * 0.2, q="q8", recipient="r8@x.test") for i in range(3)]
    stats = tally(events)["acme|c1"]
    assert (stats.delivered, stats.opens, stats.opens_human) == (10, 6, 4)
    assert (stats.clicks, stats.clicks_human, stats.every_link) == (2, 1, 1)
    assert stats.rates(human=True) == {
        "open_rate": 0.4,
        "click_rate": 0.1,
        "click_to_open_rate": 0.25,
    }
    assert stats.rates(human=False)["click_to_open_rate"] == 2 / 6


def test_the_tally_tables_count_engagement_once_across_a_replay() -> None:
    events = [ev(EventType.DELIVERY), ev(EventType.OPEN), click(0, T + 5), click(1, T + 5.5)]
    events += [click(2, T + 6)]
    t = tallied(wall=T)
    for offset, event in enumerate(events):
        t.count("acme|c1", event, 0, offset)
    expected = tally(events)["acme|c1"]
    assert published(t) == expected
    # a crash after the engagement state was written but before the counts: replayed
    t.counts["acme|c1"] = {**t.counts["acme|c1"], "o": 1, "c": {"delivered": 1, "opens": 1}}
    t.counts["acme|c1"]["c"]["opens_human"] = 1
    for offset, event in enumerate(events):
        t.count("acme|c1", event, 0, offset)
    assert published(t) == expected
    assert (expected.clicks, expected.clicks_human, expected.every_link) == (1, 0, 1)


def test_old_engagement_state_is_swept() -> None:
    t = tallied(wall=T + 40 * 86400)
    t.count("acme|c1", ev(EventType.OPEN), 0, 0)
    assert len(t.engaged) == 1
    t._sweep(0)
    assert t.engaged == {}
