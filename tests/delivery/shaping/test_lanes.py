"""Lanes: one per (source address, destination), each a controller and its limiter, inside the
shaping engine, on a simulated clock."""

from __future__ import annotations

import itertools

import pytest
from support.shaping import SimResult, SimulatedWorker

from mailsluice.contracts.control import Command
from mailsluice.contracts.control import Learned as LearnedRecord
from mailsluice.delivery.shaping import status
from mailsluice.delivery.shaping.controller_tuning import TUNING
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.delivery.shaping.scheduler import Scheduler
from mailsluice.policy.shaping import load_policy_text

A, B = "192.0.2.10", "192.0.2.11"
POLICY = """
[defaults]
connection_limit = 10
max_message_rate = "600/min"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"
"""
BLOCKED = (421, "4.7.0", "Your IP 192.0.2.10 is temporarily blocked after repeated deferrals")
RATE = (450, "4.2.1", "rate limit exceeded, slow down")


class Clock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def shaper(sources: tuple[str, ...] = (A, B), wall: Clock | None = None) -> PolicyShaper:
    return PolicyShaper(load_policy_text(POLICY), "p", sources=sources, wall=wall or Clock())


def reply(code_enhanced_text: tuple[int, str, str], source: str, phase: str = "rcpt") -> SimResult:
    return SimResult("r@isp.example", *code_enhanced_text, phase, source)


def test_a_new_destination_starts_modestly_from_every_source_in_turn() -> None:
    s = shaper()
    assert [s.try_start("isp.example", 0.0) for _ in range(3)] == [A, B, None]
    # each source at the controller's starting rate, one message at a time
    assert s.wait_time("isp.example", 0.0) == pytest.approx(1 / TUNING.start_rate)
    assert s.try_start("isp.example", 1 / TUNING.start_rate) == A


def test_a_blocked_source_leaves_the_other_sending_and_never_connects_meanwhile() -> None:
    s = shaper()
    assert s.try_start("isp.example", 0.0) == A
    s.finished("isp.example", A, 0.1)
    s.observe("isp.example", 0.1, [reply(BLOCKED, A, "greeting")])
    starts = []
    t = 0.2
    while t < TUNING.block_initial:
        source = s.try_start("isp.example", t)
        if source is not None:
            starts.append(source)
            s.finished("isp.example", source, t)
            s.observe("isp.example", t, [SimResult("r", 250, "2.0.0", "ok", "data", source)])
        t += 0.1
    assert starts and set(starts) == {B}
    # after the block interval, exactly one probe goes from A
    t = 0.1 + TUNING.block_initial + 0.05
    sources = [s.try_start("isp.example", t + i * 0.001) for i in range(50)]
    assert sources.count(A) == 1


def test_every_source_blocked_sends_the_backlog_away_with_the_reply_as_its_reason() -> None:
    s = shaper()
    for source in (A, B):
        s.observe("isp.example", 0.0, [reply(BLOCKED, source, "greeting")])
    assert s.wait_time("isp.example", 1.0) == pytest.approx(TUNING.block_initial - 1.0)
    sched: Scheduler[str] = Scheduler(s, 5.0)
    deferral = sched.push("isp.example", "m", 1.0)
    assert deferral is not None
    assert deferral.held == "blocked"
    assert "temporarily blocked after repeated deferrals" in deferral.reason
    assert deferral.wait == pytest.approx(TUNING.block_initial - 1.0)


def test_deferred_messages_get_slots_spread_at_the_rate_the_lane_grows_to() -> None:
    s = shaper(sources=(A,))
    sched: Scheduler[int] = Scheduler(s, 5.0)
    waits = []
    for n in range(400):  # the first few fit the horizon, the rest leave memory
        deferral = sched.push("isp.example", n, 0.0)
        if deferral is not None:
            waits.append(deferral.wait)
    assert len(waits) >= 390
    gaps = [b - a for a, b in itertools.pairwise(waits)]
    # in slow start the slots follow the rate doubling every window, up to the policy's 10/s
    assert gaps[0] <= 1 / TUNING.start_rate
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(gaps))
    assert gaps[-1] == pytest.approx(0.1)
    assert waits[-1] < 400 / TUNING.start_rate / 5  # far sooner than at the starting rate
    # a transactional message does not queue behind the reserved slots
    urgent: Scheduler[str] = Scheduler(s, 5.0, urgent=lambda item: item == "tx")
    assert urgent.push("isp.example", "tx", 0.0) is None


def test_a_rate_reply_cuts_one_source_and_the_learned_limits_come_back_after_a_restart() -> None:
    wall = Clock()
    s = shaper(wall=wall)
    t = 0.0
    while t < 60.0:  # clean sending from both: slow start grows
        source = s.try_start("isp.example", t)
        if source is not None:
            s.finished("isp.example", source, t)
            s.observe("isp.example", t, [SimResult("r", 250, "2.0.0", "ok", "data", source)])
        t += 0.05
    grown = s.lanes.of("isp.example", t)[0].rate(t)
    assert grown > TUNING.start_rate
    s.observe("isp.example", t, [reply(RATE, A)])
    lane_a, lane_b = s.lanes.of("isp.example", t)
    assert lane_a.rate(t) < grown
    assert lane_b.rate(t) == pytest.approx(grown, rel=0.3)  # the other source is not cut
    changes = s.drain_changes()
    assert any(c.source == A and c.cls == "rate" for c, _rule in changes)
    assert any(rule == "any-rate-limit-exceeded" for _c, rule in changes)
    records = status.learned_records(s, t)
    assert {r.source for r in records} >= {A}
    learned_a = next(r for r in records if r.source == A)
    assert learned_a.last_class == "rate"
    assert learned_a.rate == pytest.approx(lane_a.rate(t)) or learned_a.state == "hold"

    restarted = shaper(wall=wall)
    for record in records:
        assert status.restore(restarted, record, 5.0)
    lane = restarted.lanes.of("isp.example", 5.0)[0]
    assert lane.source == A
    restored = lane.steering.learned()
    assert (restored.state, restored.last_class) == (learned_a.state, "rate")
    assert restored.rate == pytest.approx(learned_a.rate)
    assert lane.steering.state != "slow_start"
    # a record of another pool, or one too old to trust, is not restored
    other = records[0].__class__(**{**records[0].__dict__, "pool": "q"})
    assert not status.restore(restarted, other, 5.0)
    stale = records[0].__class__(**{**records[0].__dict__, "ts": wall() - 8 * 86400})
    assert not status.restore(restarted, stale, 5.0)


def test_resume_lifts_a_block_and_rows_show_each_source() -> None:
    wall = Clock()
    s = shaper(wall=wall)
    s.observe("isp.example", 0.0, [reply(BLOCKED, A, "greeting")])
    rows = {r.source: r for r in status.rows(s, 1.0, lambda _k: 4)}
    assert rows[A].state == "blocked"
    assert rows[A].last_class == "block"
    assert rows[A].rule == "any-ip-temporarily-blocked"
    assert rows[A].until == pytest.approx(wall() + TUNING.block_initial - 1.0)
    assert "temporarily blocked" in rows[A].last_error
    assert rows[A].queued == 4 and rows[A].rate == 0.0
    assert rows[B].state == "slow_start"
    assert s.apply_command(Command("p", "isp.example", "resume"), 2.0)
    assert s.lanes.of("isp.example", 2.0)[0].steering.wait(2.0) == 0.0
    # a suspension shows on every source's row
    s.apply_command(Command("p", "isp.example", "suspend", until=wall() + 600, by="ops"), 3.0)
    assert {r.state for r in status.rows(s, 3.0, lambda _k: 0)} == {"suspended"}
    held, reason = s.why_held("isp.example", 3.0)
    assert held == "suspended" and "suspended by ops until" in reason


def test_only_a_learning_destination_holds_deferred_recipients_for_capacity() -> None:
    rate_reply = reply(RATE, A)
    assert shaper().observe("isp.example", 0.0, [rate_reply]).held == {"r@isp.example"}
    fixed = PolicyShaper(load_policy_text(POLICY), "p", sources=(A,), adaptive=False)
    # nothing slows a fixed destination down: its deferrals take the failure schedule
    assert fixed.observe("isp.example", 0.0, [rate_reply]).held == frozenset()


def test_a_big_backlog_drains_as_fast_as_slow_start_grows() -> None:
    # Slots planned at the starting rate would bring the backlog back too slowly for the lane
    # to ever look busy, so it would never grow: planned along the growth curve it does.
    s = PolicyShaper(load_policy_text(POLICY), "p", sources=(A, B))
    worker = SimulatedWorker(s, send_s=0.3, return_s=1.0)
    worker.enqueue("isp.example", range(2000))
    worker.run_until(150.0)
    assert len(worker.starts["isp.example"]) == 2000  # 2 x 10/s ceiling: ~100 s at the top
    assert worker.deferred < 2 * 2000  # each message leaves memory twice at most on average


def test_a_command_for_a_provider_covers_its_shards() -> None:
    wall = Clock()
    s = shaper(wall=wall)
    s.observe("isp#1", 0.0, [reply(BLOCKED, A, "greeting")])
    s.apply_command(Command("p", "isp", "suspend", until=wall() + 600, by="ops"), 1.0)
    for key in ("isp", "isp#1", "isp#2"):
        assert s.try_start(key, 2.0) is None
        assert s.why_held(key, 2.0)[0] == "suspended"
    assert s.try_start("isp.example", 2.0) == A  # another destination is not covered
    assert s.apply_command(Command("p", "isp", "resume"), 3.0)
    # the suspension is lifted and so is the block of the shard's lane
    assert s.try_start("isp#1", 3.0) == A
    assert s.try_start("isp#2", 3.0) == A


def test_a_start_hint_in_the_policy_is_where_slow_start_begins() -> None:
    text = POLICY + '\n[domain."warm.example"]\nstart_rate = "120/min"\nstart_connections = 4\n'
    s = PolicyShaper(load_policy_text(text), "p", sources=(A, B))
    (lane, _other) = s.lanes.of("warm.example", 0.0)
    assert lane.steering.state == "slow_start"
    assert lane.rate(0.0) == pytest.approx(2.0)  # per source address
    assert lane.steering.connections(0.0) == 4
    (plain, _other) = s.lanes.of("isp.example", 0.0)
    assert plain.rate(0.0) == pytest.approx(TUNING.start_rate)


def learned_record(rate: float, ts: float) -> LearnedRecord:
    return LearnedRecord(
        pool="p",
        source=A,
        key="isp.example",
        state="steady",
        rate=rate,
        ceiling=rate / TUNING.steady,
        connections=2,
        learned_connections=0,
        per_connection=0,
        until=0.0,
        block_interval=0.0,
        last_class="rate",
        last_reply="450 4.2.1 rate limit exceeded",
        ts=ts,
    )


def test_a_key_handed_back_takes_the_newer_limits_its_other_owner_learned() -> None:
    wall = Clock()
    s = shaper(sources=(A,), wall=wall)
    s.observe("isp.example", 10.0, [reply(RATE, A)])  # this worker's own reply, at 10
    (lane,) = s.lanes.of("isp.example", 11.0)
    own = lane.rate(11.0)
    # its own record read back (written right after its reply): its live state stays
    wall.t += 12.0
    status.restore(s, learned_record(own / 4, wall()), 12.0)
    assert lane.rate(12.0) == pytest.approx(own)
    # the key was another worker's meanwhile, which learned a lower limit later on
    wall.t += 188.0
    status.restore(s, learned_record(own / 4, wall()), 200.0)
    (lane,) = s.lanes.of("isp.example", 200.0)
    assert lane.rate(200.0) == pytest.approx(own / 4)
