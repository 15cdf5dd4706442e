"""The shaping controller on a simulated clock: each reply class's reaction, with the numbers
of its Tuning."""

from __future__ import annotations

import math

import pytest
from support.provider_model import PROVIDERS, ProviderLimits, ProviderModel

from mailsluice.delivery.shaping.controller import (
    TUNING,
    Ceilings,
    Change,
    Controller,
    Learned,
    Signal,
)
from mailsluice.delivery.shaping.controller_bucket import RUNS, Bucket
from mailsluice.policy.replies import ReplyClass

T = TUNING
POLICY = Ceilings(rate=2.0, connections=10, per_connection=100)
RATE_REPLY = "450 4.2.1 rate limit exceeded, slow down"
BLOCK_REPLY = "421 4.7.0 Your IP 127.0.0.21 is temporarily blocked after repeated deferrals"


def controller(ceilings: Ceilings = POLICY, now: float = 0.0) -> Controller:
    return Controller("127.0.0.21", "isp", ceilings, now)


def reply(cls: ReplyClass, at: float, text: str = "", **kw: int | float) -> Signal:
    return Signal(cls, at, "rcpt", text, **kw)  # type: ignore[arg-type]


def deferred(c: Controller, at: float, cls: ReplyClass = ReplyClass.RATE) -> Change | None:
    """A send that starts at `at` and is deferred there."""
    c.started(at)
    return c.observe(reply(cls, at, RATE_REPLY))


def send_clean(c: Controller, start: float, end: float) -> int:
    """Send whenever the controller allows from `start` to `end`, every send accepted at once;
    returns how many went."""
    t, sent = start, 0
    while t < end:
        c.tick(t)
        if c.wait(t) == 0 and c.rate(t) > 0:
            c.started(t)
            c.observe(reply(ReplyClass.SUCCESS, t, open_connections=1))
            sent += 1
            t += 1 / c.rate(t)
        else:
            t += 0.05
    c.tick(end)
    return sent


def at_policy_rate(until: float = 50.0) -> Controller:
    """A controller whose slow start reached the policy's 2/s without a deferral, sending at
    it until `until`."""
    c = controller()
    send_clean(c, 0.0, until)
    assert (c.state, c.rate(until)) == ("steady", POLICY.rate)
    return c


# --- slow start ---


def test_an_unknown_destination_starts_slow_and_never_above_the_policy() -> None:
    c = controller(Ceilings(rate=math.inf, connections=10, per_connection=100))
    assert (c.state, c.rate(0.0), c.connections(0.0)) == (
        "slow_start",
        T.start_rate,
        T.start_connections,
    )
    assert controller(Ceilings(rate=0.1, connections=1, per_connection=5)).rate(0.0) == 0.1
    hinted = controller(Ceilings(1.0, 10, 100, start_rate=0.05, start_connections=3))
    assert (hinted.rate(0.0), hinted.connections(0.0)) == (0.05, 3)


def test_slow_start_grows_by_its_factor_per_clean_used_window_up_to_the_policy() -> None:
    c = controller()
    rates = []
    for end in range(10, 60, 10):
        send_clean(c, end - T.window, end)
        rates.append(c.rate(end))
    assert rates == [0.4, 0.8, 1.6, 2.0, 2.0]
    assert rates[0] == T.start_rate * T.growth
    assert c.state == "steady"


def test_an_unused_rate_does_not_grow() -> None:
    c = controller()
    for end in range(10, 60, 10):
        c.tick(float(end))
    assert c.rate(60.0) == T.start_rate


# --- rate replies ---


def test_a_rate_reply_cuts_from_the_rate_achieved_then_holds() -> None:
    c = at_policy_rate()
    change = deferred(c, 50.0)
    assert change == Change(
        "127.0.0.21", "isp", "steady", "hold", "rate", RATE_REPLY, T.beta_rate * 2.0, 2, 50.0
    )
    learned = c.learned()
    # One reply and nothing else is no proof of where the limit is: no ceiling is kept.
    assert (learned.ceiling, learned.until, learned.last_class) == (
        math.inf,
        50.0 + T.hold_rate,
        "rate",
    )


def test_replies_of_sends_in_flight_at_a_cut_do_not_cut_again() -> None:
    c = at_policy_rate()
    for _ in range(5):  # five sends in flight when the first reply comes back deferred
        c.started(49.9)
    c.observe(reply(ReplyClass.RATE, 50.0, RATE_REPLY))
    cut = c.rate(50.0)
    for i in range(4):
        assert c.observe(reply(ReplyClass.RATE, 50.1 + i / 100, RATE_REPLY)) is None
    assert c.rate(51.0) == cut
    # Sends after the cut go through, then one is deferred: the bucket was just empty, the
    # rate may well be right; nothing proves it too high, so still one cut.
    send_clean(c, 50.2, 53.0)
    c.started(53.0)
    assert c.observe(reply(ReplyClass.RATE, 53.0, RATE_REPLY)) is None
    assert c.rate(53.0) == cut


def test_a_deferral_after_the_window_cuts_again_from_what_was_achieved() -> None:
    c = at_policy_rate()
    deferred(c, 50.0)
    first = c.rate(50.0)
    send_clean(c, 50.0, 50.0 + T.window + 1)
    deferred(c, 61.0)
    # Twenty messages between two deferrals prove the rate: it becomes the ceiling.
    ceiling = c.learned().ceiling
    assert first * 0.95 < ceiling <= first * 1.05
    assert c.rate(61.0) == pytest.approx(T.beta_rate * ceiling)


def test_leaving_slow_start_the_rate_halves_from_what_was_achieved() -> None:
    c = controller(Ceilings(rate=math.inf, connections=10, per_connection=100))
    send_clean(c, 0.0, 35.0)
    before = c.rate(35.0)
    deferred(c, 35.0)
    # From the rate accepted over the last window, at most the rate in force (a window
    # doubled into proves nothing above it), at least what came before the doubling.
    assert T.beta_start * before / T.growth <= c.rate(35.0) <= T.beta_start * before


def test_after_the_hold_an_unproven_ceiling_is_searched_for_step_by_step() -> None:
    c = at_policy_rate()
    deferred(c, 50.0)
    cut = c.rate(50.0)
    assert c.next_change(50.0) == 50.0 + T.window
    send_clean(c, 50.0, 50.0 + T.hold_rate)
    assert c.state == "steady"
    send_clean(c, 50.0 + T.hold_rate, 50.0 + T.hold_rate + T.window)
    assert c.state == "probing"
    assert c.rate(80.0) == pytest.approx(cut * T.search)


# --- reputation replies ---


def test_a_reputation_reply_cuts_harder_and_holds_longer_but_not_to_the_floor() -> None:
    c = at_policy_rate()
    deferred(c, 50.0, ReplyClass.REPUTATION)
    assert c.rate(50.0) == pytest.approx(T.beta_reputation * 2.0)
    assert c.rate(50.0) > T.floor
    assert c.learned().until == 50.0 + T.hold_reputation
    assert T.hold_reputation > T.hold_rate and T.beta_reputation < T.beta_rate


def test_repeated_reputation_replies_compound_down_to_the_floor_never_below() -> None:
    c = at_policy_rate()
    now, rates = 50.0, []
    for _ in range(12):
        deferred(c, now, ReplyClass.REPUTATION)
        rates.append(c.rate(now))
        now += T.window + 1  # one cut per window
    assert rates[1] < rates[0]
    assert min(rates) == T.floor
    assert all(r >= T.floor for r in rates)


# --- connections and messages per connection ---


def test_a_connections_reply_teaches_the_connection_count_and_leaves_the_rate() -> None:
    c = controller(Ceilings(rate=2.0, connections=10, per_connection=100, start_connections=6))
    before = c.rate(1.0)
    change = c.observe(reply(ReplyClass.CONNECTIONS, 1.0, "421 4.3.2", open_connections=5))
    assert change is not None and change.connections == 4
    assert (c.connections(1.0), c.rate(1.0), c.state) == (4, before, "slow_start")
    assert c.observe(reply(ReplyClass.CONNECTIONS, 2.0, "421 4.3.2", open_connections=7)) is None
    assert c.connections(2.0) == 4 and c.learned().learned_connections == 4
    c.observe(reply(ReplyClass.CONNECTIONS, 3.0, "421 4.3.2", open_connections=1))
    assert c.connections(3.0) == 1  # never below one


def test_a_per_connection_reply_teaches_the_messages_per_connection_and_nothing_else() -> None:
    c = at_policy_rate()
    state, rate = c.state, c.rate(50.0)
    c.observe(reply(ReplyClass.PER_CONNECTION, 50.0, "421 4.7.0 too many", sent_on_connection=12))
    assert (c.per_connection(), c.state, c.rate(50.0)) == (12, state, rate)
    assert c.wait(50.0) == 0.0  # reconnect at once
    assert controller(Ceilings(2.0, 10, 8)).per_connection() == 8


# --- blocks ---


def blocked(now: float = 50.0) -> Controller:
    c = at_policy_rate()
    change = c.observe(reply(ReplyClass.BLOCK, now, BLOCK_REPLY))
    assert change is not None and (change.to_state, change.rate, change.connections) == (
        "blocked",
        0.0,
        0,
    )
    return c


def never_sends(c: Controller, start: float, end: float) -> None:
    t = start
    while t < end:
        c.tick(t)
        assert c.wait(t) > 0 and c.rate(t) == 0.0 and c.connections(t) == 0, t
        t += 0.5


def test_a_block_stops_every_send_for_its_interval_then_lets_exactly_one_probe() -> None:
    c = blocked(50.0)
    never_sends(c, 50.0, 50.0 + T.block_initial)
    assert c.next_change(60.0) == 50.0 + T.block_initial
    change = c.tick(50.0 + T.block_initial)
    assert change is not None and (change.from_state, change.to_state) == ("blocked", "probe")
    assert c.wait(110.0) == 0.0 and c.connections(110.0) == 1
    c.started(110.0)
    assert c.wait(110.5) == math.inf  # one send at a time until its reply
    change = c.observe(reply(ReplyClass.SUCCESS, 111.0))
    assert change is not None and (change.from_state, change.to_state) == ("probe", "slow_start")
    assert c.wait(111.0) == 0.0


def test_each_failed_probe_doubles_the_block_up_to_its_cap() -> None:
    c, now = blocked(0.0), 0.0
    intervals = []
    for _ in range(9):
        interval = c.learned().until - now
        intervals.append(interval)
        never_sends(c, now, now + interval)
        now += interval
        c.tick(now)
        c.started(now)
        c.observe(reply(ReplyClass.BLOCK, now + 0.1, BLOCK_REPLY))
        now += 0.1
    assert intervals[:4] == pytest.approx([60.0, 120.0, 240.0, 480.0])
    assert max(intervals) == pytest.approx(T.block_cap)
    assert intervals[-1] == pytest.approx(T.block_cap)


def test_a_block_rule_may_name_a_longer_minimum() -> None:
    c = at_policy_rate()
    c.observe(Signal(ReplyClass.BLOCK, 50.0, "greeting", BLOCK_REPLY, min_block=600.0))
    assert c.learned().until == 650.0


def test_replies_in_flight_when_blocked_change_nothing() -> None:
    c = blocked(50.0)
    until = c.learned().until
    assert c.observe(reply(ReplyClass.BLOCK, 50.1, BLOCK_REPLY)) is None
    assert c.observe(reply(ReplyClass.RATE, 50.2, RATE_REPLY)) is None
    assert c.learned().until == until


# --- server trouble ---


def test_one_server_failure_changes_nothing_a_streak_stops_then_probes() -> None:
    c = at_policy_rate()
    assert c.observe(reply(ReplyClass.SERVER, 50.0, "451 4.3.0")) is None
    assert c.observe(reply(ReplyClass.SERVER, 50.5, "451 4.3.0")) is None
    c.observe(reply(ReplyClass.SUCCESS, 51.0))  # an accepted reply breaks the streak
    for i in range(T.server_streak - 1):
        assert c.observe(reply(ReplyClass.SERVER, 52.0 + i, "451 4.3.0")) is None
    change = c.observe(reply(ReplyClass.SERVER, 55.0, "421 4.3.2 Service not available"))
    assert change is not None and change.to_state == "blocked"
    assert c.learned().until == 55.0 + T.server_initial
    never_sends(c, 55.0, 55.0 + T.server_initial)
    c.tick(55.0 + T.server_initial)
    c.started(70.0)
    c.observe(reply(ReplyClass.SERVER, 70.1, "421 4.3.2 Service not available"))
    assert c.learned().until == pytest.approx(70.1 + 2 * T.server_initial)  # doubled
    c.tick(200.0)
    c.started(200.0)
    change = c.observe(reply(ReplyClass.SUCCESS, 200.1))
    assert change is not None and change.to_state == "steady"  # back where it was
    assert c.rate(200.1) == POLICY.rate


# --- persistence and policy ---


def test_a_controller_built_from_what_another_learned_behaves_the_same() -> None:
    a = at_policy_rate()
    a.observe(reply(ReplyClass.CONNECTIONS, 50.0, "421 4.3.2", open_connections=4))
    a.observe(reply(ReplyClass.PER_CONNECTION, 50.0, "421 4.7.0", sent_on_connection=20))
    a.observe(reply(ReplyClass.RATE, 51.0, RATE_REPLY))
    learned = a.learned()
    b = Controller("127.0.0.21", "isp", POLICY, 52.0, learned=learned)
    assert b.learned() == learned

    def looks(c: Controller, now: float) -> tuple[object, ...]:
        return (c.state, c.rate(now), c.connections(now), c.per_connection(), c.wait(now))

    for now in (52.0, 60.0, 66.0, 70.0):
        a.tick(now)
        b.tick(now)
        assert looks(a, now) == looks(b, now)
    for c in (a, b):
        c.observe(reply(ReplyClass.BLOCK, 70.0, BLOCK_REPLY))
    assert looks(a, 70.0) == looks(b, 70.0) and a.learned() == b.learned()
    for now in (100.0, 130.0):
        a.tick(now)
        b.tick(now)
        assert looks(a, now) == looks(b, now)


def test_a_learned_block_still_running_keeps_blocking() -> None:
    learned = Learned(1.0, 2.0, 2, 0, 0, "blocked", 500.0, "block", BLOCK_REPLY, 120.0)
    c = Controller("127.0.0.21", "isp", POLICY, 400.0, learned=learned)
    never_sends(c, 400.0, 500.0)
    c.tick(500.0)
    assert c.state == "probe" and c.wait(500.0) == 0.0


def test_new_ceilings_bound_what_was_learned_without_raising_it() -> None:
    c = at_policy_rate()
    c.set_ceilings(Ceilings(rate=1.0, connections=1, per_connection=3))
    assert (c.rate(50.0), c.connections(50.0), c.per_connection()) == (1.0, 1, 3)
    c.set_ceilings(POLICY)
    assert (c.rate(50.0), c.connections(50.0)) == (1.0, 1)


# --- what the replies prove about the bucket ---


def test_two_episodes_against_a_token_bucket_give_its_rate() -> None:
    """The bucket fit: sending above a provider's rate from a fresh start, then under it,
    then above it again, the second deferral gives the rate within a few percent."""
    limits = ProviderLimits(rate_per_min=120.0, burst=20, connections=5, per_connection=100)
    model, ip = ProviderModel(limits, PROVIDERS["isp"][0]), "127.0.0.21"
    bucket, now, fits = Bucket(0.0, T.window), 0.0, []
    for pace, until in ((3.0, 30.0), (1.5, 60.0), (2.5, 120.0)):
        while now < until:
            if model.rcpt(ip, now).ok:
                bucket.accepted(now)
            else:
                fit = bucket.fit(now, 0.5, pace, T.min_proof)
                if fit is not None:
                    fits.append(fit[0])
                bucket.deferred(now)
            now += 1 / pace
    assert fits and fits[0] == pytest.approx(2.0, rel=0.03)
    assert bucket.burst == pytest.approx(20, abs=2)


def test_memory_stays_bounded_however_many_messages_go() -> None:
    c = controller(Ceilings(rate=math.inf, connections=10, per_connection=100))
    now = 0.0
    for i in range(50_000):
        now = i * 0.01
        c.started(now)
        c.observe(reply(ReplyClass.SUCCESS, now))
    evidence = c._evidence  # the sizes are what this test is about
    assert len(evidence.bucket._runs) <= RUNS
    assert len(evidence.recent) <= T.calm_deferrals
    assert evidence.bounds.total == 50_000
