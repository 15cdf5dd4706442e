"""A destination whose limit was learned, handed over to another worker (a rebalance), on a
simulated clock: the new owner restores the old owner's learned limits as the runtime does
(status.learned_records -> the control topic's contract -> status.restore) and goes on at the
learned rate, with no slow start, no burst and no deferrals beyond the steady state's.

The provider (support.provider_model) limits the pool's one source address to a rate the
policy does not know; both workers send from that address, as every worker of a pool does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from support.provider_model import PROVIDERS, ProviderLimits, ProviderModel
from support.scripts import script
from support.shaping import POLICY, Reply, SimulatedWorker, per_minute

from mailsluice.contracts.control import decode_learned, encode_learned, learned_key
from mailsluice.delivery.shaping import status as shaping_status
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.policy.shaping import load_policy_text

shaping_figures = script("bench_shaping_figures")

KEY = "learned.example"  # no rule of its own: the policy's generous defaults are its ceilings
SOURCE = "192.0.2.7"
LIMITS = ProviderLimits(rate_per_min=480, burst=5, connections=20, per_connection=100)
HANDOVER = 420.0  # the old owner has long found the limit by then
PUBLISH_S = 1.0  # the runtime publishes changed learned limits about this often
WALL0 = 1.8e9  # the shapers' wall clock at simulated time 0
HORIZON = 86400.0


@dataclass
class Run:
    model: ProviderModel
    starts: list[float] = field(default_factory=list)  # every send start (attempt), both owners
    accepted: list[float] = field(default_factory=list)  # starts of the sends it accepted
    deferred: list[float] = field(default_factory=list)  # starts of the sends it deferred
    second: SimulatedWorker | None = None
    rates: tuple[float, float] = (0.0, 0.0)  # the old owner's rate at the handover, the new's


def provider_reply(run: Run) -> Callable[[str, object, float, str], Reply | None]:
    def reply(key: str, item: object, started: float, source: str) -> Reply | None:
        answer = run.model.rcpt(SOURCE, started)
        if not answer.ok:
            run.deferred.append(started)
            return answer.code, answer.enhanced, answer.text
        run.model.data(SOURCE, started)
        run.accepted.append(started)
        return None

    return reply


def worker(run: Run, *, start: float = 0.0) -> SimulatedWorker:
    clock: list[SimulatedWorker] = []
    shaper = PolicyShaper(
        load_policy_text(POLICY),
        "p",
        sources=(SOURCE,),
        wall=lambda: WALL0 + clock[0].now,
        adaptive=True,
    )
    # A long horizon keeps the backlog in memory (no delay topic), as in test_rates' handover.
    sim = SimulatedWorker(shaper, horizon=HORIZON, reply=provider_reply(run), start=start)
    clock.append(sim)
    return sim


def publish(sim: SimulatedWorker, control: dict[bytes, bytes]) -> None:
    """What the old owner's runtime sends to the compacted control topic: the latest record
    per key survives."""
    for record in shaping_status.learned_records(sim.shaper, sim.now):
        control[learned_key(record.pool, record.source, record.key)] = encode_learned(record)


def handover(*, restore: bool, pause: float = 0.0) -> Run:
    """Enough mail for the destination; at HANDOVER its worker stops and the other takes the
    backlog over `pause` seconds later, restoring what the control topic holds (or not)."""
    run = Run(ProviderModel(LIMITS, PROVIDERS["isp"][0]))
    first = worker(run)
    first.enqueue(KEY, range(int(LIMITS.rate_per_s * (HANDOVER + 180))))
    control: dict[bytes, bytes] = {}
    while first.now < HANDOVER:
        first.run_until(min(HANDOVER, first.now + PUBLISH_S))
        publish(first, control)
    old_rate = first.shaper.lanes.rate(KEY, first.now)
    backlog = first.hand_back()
    first.run_until(HANDOVER + 1.0)  # its sends under way end
    publish(first, control)  # the runtime's last records at stop
    second = worker(run, start=HANDOVER + pause)
    if restore:
        for value in control.values():
            shaping_status.restore(second.shaper, decode_learned(value), second.now)
    run.rates = (old_rate, second.shaper.lanes.rate(KEY, second.now))
    second.enqueue(KEY, backlog)
    second.run_until(HANDOVER + 120)
    run.starts = sorted(first.starts[KEY] + second.starts[KEY])
    run.second = second
    assert len({item for _t, item in first.sent} & {item for _t, item in second.sent}) == 0
    return run


def test_a_new_owner_goes_on_at_the_learned_rate() -> None:
    run = handover(restore=True)
    limit = LIMITS.rate_per_min
    before = per_minute(run.accepted, HANDOVER - 60, HANDOVER)
    after = per_minute(run.accepted, HANDOVER, HANDOVER + 60)
    assert before >= 0.9 * limit  # the old owner had learned the limit
    old_rate, new_rate = run.rates
    assert new_rate == pytest.approx(old_rate, rel=0.01)  # the rate in force, not the last state's
    assert after >= 0.97 * before
    assert after >= 0.9 * limit
    # no slow start again: from its first seconds it sends at the learned rate
    assert per_minute(run.accepted, HANDOVER, HANDOVER + 10) >= 0.9 * before
    assert run.second is not None
    lane = run.second.shaper.lanes.of(KEY, run.second.now)[0]
    assert lane.steering.state != "slow_start"
    # no burst: around the handover both owners together send at the learned rate, evenly
    around = [t for t in run.starts if HANDOVER - 30 <= t < HANDOVER + 30]
    assert shaping_figures.envelope_excess(around, old_rate * 1.01, 2) == 0.0
    # no deferral burst, no block
    deferred_after = [t for t in run.deferred if HANDOVER <= t < HANDOVER + 60]
    assert len(deferred_after) <= 0.02 * after
    assert run.model.stats().blocks == 0


def test_without_the_learned_limits_a_new_owner_starts_slowly_again() -> None:
    # What restoring prevents (so the test above can fail): slow start from a modest rate.
    run = handover(restore=False)
    old_rate, new_rate = run.rates
    assert new_rate < 0.1 * old_rate
    before = per_minute(run.accepted, HANDOVER - 60, HANDOVER)
    after = per_minute(run.accepted, HANDOVER, HANDOVER + 60)
    assert after < 0.97 * before
    assert per_minute(run.accepted, HANDOVER, HANDOVER + 10) < 0.5 * before


@pytest.mark.parametrize("pause", [1.0, 3.0])
def test_a_rebalance_pause_costs_only_its_own_length(pause: float) -> None:
    run = handover(restore=True, pause=pause)
    before = per_minute(run.accepted, HANDOVER - 60, HANDOVER)
    after = per_minute(run.accepted, HANDOVER, HANDOVER + 60)
    # the pause is lost, nothing more (the provider's bucket saved a burst meanwhile)
    assert after >= before * (1 - pause / 60) - LIMITS.burst - 2
