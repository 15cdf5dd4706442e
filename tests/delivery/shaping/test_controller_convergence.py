"""The shaping controller finds providers' limits by itself: simulated-clock runs against the
provider model with limits drawn at random (10 to 3,000 messages a minute, bursts of 1 to 20
seconds, 1 to 20 connections, 5 to 100 messages per connection, deferral at RCPT or at the
end of DATA, each provider's own texts, rate- or reputation-worded).

Each run sends at least 400 messages and about ten minutes' worth at the provider's limit,
through controllers that start knowing nothing (generous policy ceilings). Per run it must
converge within a few minutes, then stay within 10% below the limit (the accepted rate from
convergence to the end), defer under 2% of its attempts, and never be blocked. Deterministic:
a run is a function of its seed.
"""

from __future__ import annotations

import random

import pytest
from support.controller_sim import Result, effective_limit, simulate
from support.provider_model import PROVIDERS, ProviderLimits, ProviderTexts, random_limits

CONVERGED_S = 300.0  # "within a few minutes"
EFFICIENCY = 0.9  # accepted rate after convergence over the limit: within 10% below it
DEFERRALS_PCT = 2.0
RUN_S = 600.0  # each run is about this long at the provider's limit ...
MIN_MESSAGES = 400  # ... and sends at least this many messages
ONE_SOURCE_SEEDS = range(100)
TWO_SOURCE_SEEDS = range(40)


def drawn(seed: int) -> tuple[ProviderLimits, str, ProviderTexts]:
    rng = random.Random(seed)
    limits = random_limits(rng)
    provider = rng.choice(sorted(PROVIDERS))
    return limits, provider, rng.choice(PROVIDERS[provider])


def run(seed: int, sources: int) -> tuple[Result, str]:
    limits, provider, texts = drawn(seed)
    limit = effective_limit(limits) * sources
    messages = max(MIN_MESSAGES, round(limit * RUN_S))
    result = simulate(limits, texts, messages=messages, sources=sources, seed=seed)
    described = (
        f"seed {seed}, {sources} source(s), {provider} ({texts.rate_class} replies), "
        f"{limits.rate_per_min:g}/min burst {limits.burst} connections {limits.connections} "
        f"per connection {limits.per_connection} deferring at {limits.defer_at}, "
        f"limit {limit * 60:.1f}/min, {messages} messages"
    )
    return result, described


def check(result: Result, described: str) -> None:
    converged = result.converged()
    efficiency = result.efficiency(converged) if converged < float("inf") else 0.0
    figures = (
        f"{described}: converged at {converged:g} s, efficiency after {efficiency:.3f}, "
        f"deferrals {result.deferral_pct:.2f}% ({result.deferred} of {result.attempts}), "
        f"blocks {result.blocks}; first changes: "
        + ", ".join(
            f"{c.at:.0f}s {c.to_state}/{c.cls} {c.rate * 60:.1f}" for c in result.changes[:12]
        )
    )
    assert result.blocks == 0, figures
    assert converged <= CONVERGED_S, figures
    assert efficiency >= EFFICIENCY, figures
    assert result.deferral_pct < DEFERRALS_PCT, figures


@pytest.mark.parametrize("seed", ONE_SOURCE_SEEDS)
def test_one_source_finds_the_limit_and_stays_under_it(seed: int) -> None:
    check(*run(seed, 1))


@pytest.mark.parametrize("seed", TWO_SOURCE_SEEDS)
def test_two_sources_each_find_their_limit(seed: int) -> None:
    """Providers count per source IP: two addresses, each with its own controller and its own
    bucket at the provider, share one queue."""
    check(*run(seed, 2))
