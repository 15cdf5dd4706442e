"""A backlog that leaves memory still lets the controller learn: the worker's memory side (real
Scheduler, real PolicyShaper) on a simulated clock against a provider model whose limits the
policy does not know.

Mail that waits longer than the short horizon goes to a delay topic and comes back at the slot
it was given. Slots planned at today's rate bring the backlog back at exactly today's rate, so
no window is ever busier than today and the rate never grows past its first cut: a 30/min
provider was served at 0.57 of its limit that way. Planned along the controller's growth curve
(controller.projected) the backlog comes back as fast as the rate may grow.
"""

from __future__ import annotations

import math
import random

import pytest
from support.provider_model import PROVIDERS, ProviderLimits, ProviderModel, random_limits
from support.shaping import Reply, SimulatedWorker

from mailsluice.delivery.shaping.controller import Ceilings, Controller, Signal
from mailsluice.delivery.shaping.engine import PolicyShaper
from mailsluice.policy.replies import ReplyClass
from mailsluice.policy.shaping import load_policy_text

SOURCES = ("192.0.2.10", "192.0.2.11")
POLICY = """
[defaults]
connection_limit = 20
max_message_rate = "100/s"
max_deliveries_per_connection = 100
max_recipients_per_transaction = 100
tls = "opportunistic"
"""
KEY = "isp.example"


def campaign(limits: ProviderLimits, messages: int, sources: tuple[str, ...]) -> dict[str, float]:
    """All `messages` queued at once for one provider; figures of the run."""
    model = ProviderModel(limits, PROVIDERS["isp"][0])
    accepted: list[float] = []

    def reply(_key: str, _item: object, started: float, source: str) -> Reply | None:
        for answer in (
            model.mail(source, 0, started),
            model.rcpt(source, started),
            model.data(source, started),
        ):
            if not answer.ok:
                return answer.code, answer.enhanced, answer.text
        accepted.append(started)
        return None

    shaper = PolicyShaper(load_policy_text(POLICY), "p", sources=sources)
    worker = SimulatedWorker(shaper, send_s=0.3, return_s=1.0, reply=reply)
    worker.enqueue(KEY, range(messages))
    end = 0.0
    while len(accepted) < messages and end < 3600.0:
        end += 10.0
        worker.run_until(end)
    stats = model.stats()
    span = accepted[-1] - accepted[0] if len(accepted) == messages else math.inf
    return {
        "efficiency": model.ideal_seconds(messages, len(sources)) / span,
        "deferral_pct": 100.0 * stats.deferred / max(1, stats.attempts),
        "blocks": stats.blocks,
        "left_memory": worker.deferred / messages,
    }


@pytest.mark.parametrize(
    ("limits", "sources"),
    [
        (ProviderLimits(30, 3, 2, 20), SOURCES),  # the bench's smallest ISP
        (ProviderLimits(60, 5, 2, 10), SOURCES),
        (ProviderLimits(30, 1, 2, 20), SOURCES[:1]),
        (ProviderLimits(120, 2, 3, 50), SOURCES[:1]),
    ],
    ids=["30-b3-2src", "60-b5-2src", "30-b1-1src", "120-b2-1src"],
)
def test_a_backlog_out_of_memory_is_sent_close_to_the_limit(
    limits: ProviderLimits, sources: tuple[str, ...]
) -> None:
    # ~5 minutes of mail at the limit: long enough that learning, not slow start, decides
    messages = round(limits.rate_per_min * 5 * len(sources))
    figures = campaign(limits, messages, sources)
    assert figures["efficiency"] >= 0.8, figures
    assert figures["deferral_pct"] < 2.0, figures
    assert figures["blocks"] == 0, figures
    # each message leaves memory for a delay topic a few times at most (no re-produce loop)
    assert figures["left_memory"] < 3.0, figures


# The one-source convergence test's random limits, its first 30 seeds up to what this
# memory-side model carries (it has no connections: at the starting two, 0.3 s a send, about
# 400/min); the faster, connection-bound range is test_controller_convergence's.
SWEEP_MAX_PER_MIN = 300.0
SWEEP = [
    seed
    for seed in range(100)
    if random_limits(random.Random(seed)).rate_per_min <= SWEEP_MAX_PER_MIN
][:30]


@pytest.mark.parametrize("seed", SWEEP)
def test_random_limits_are_met_through_the_delay_topics(seed: int) -> None:
    limits = random_limits(random.Random(seed))
    sources = SOURCES[:1]
    # as in the convergence test: ten minutes' worth at the limit, at least 400 messages
    messages = max(400, round(limits.rate_per_min * 10))
    figures = campaign(limits, messages, sources)
    assert figures["efficiency"] >= 0.85, (limits, figures)
    assert figures["deferral_pct"] < 2.0, (limits, figures)
    assert figures["blocks"] == 0, (limits, figures)
    assert figures["left_memory"] < 3.0, (limits, figures)


def searching(ceiling: float = 100.0) -> Controller:
    """A controller cut once by a reply of a handful of messages: no ceiling proven."""
    ctl = Controller("s", KEY, Ceilings(rate=ceiling, connections=10, per_connection=100), 0.0)
    ctl.started(0.0)
    ctl.observe(Signal(ReplyClass.RATE, 1.0, reply="450 4.2.1 rate limit exceeded"))
    return ctl


def test_the_projection_follows_the_growth_the_state_allows() -> None:
    ctl = searching()
    assert ctl.state == "hold"
    rate, until = ctl.rate(2.0), 1.0 + ctl.tuning.hold_rate
    # flat during the hold, then one search step per window
    assert ctl.projected(2.0, until) == pytest.approx(rate)
    later = until + 3 * ctl.tuning.window
    assert ctl.projected(2.0, later) == pytest.approx(rate * ctl.tuning.search**3)
    assert ctl.projected(2.0, 1.0) == pytest.approx(rate)  # the past: today's rate
    # never above the policy's ceiling
    low = searching(ceiling=rate * 1.5)
    assert low.projected(2.0, until + 10 * ctl.tuning.window) == pytest.approx(rate * 1.5)


def test_a_fresh_controller_projects_slow_start_doubling() -> None:
    ctl = Controller("s", KEY, Ceilings(rate=100.0, connections=10, per_connection=100), 0.0)
    start = ctl.rate(0.0)
    assert ctl.projected(0.0, 2 * ctl.tuning.window) == pytest.approx(start * 4)
