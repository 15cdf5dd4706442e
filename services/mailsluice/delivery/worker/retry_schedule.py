"""Retry schedule and retry records: capped exponential backoff with jitter, through delay tiers.

Defaults follow Postfix (minimal_backoff_time 300 s, maximal_backoff_time 4000 s) with the delay
doubling per attempt; jitter spreads retries of a burst so they do not come back together.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from mailsluice.contracts.envelope import ENVELOPE_HEADER, Envelope, encode_envelope
from mailsluice.contracts.topics import RETRY_TIERS, retry_topic


def backoff(
    attempt: int,
    *,
    base: float,
    factor: float,
    cap: float,
    jitter: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before the next try after `attempt` failed tries (attempt >= 1): base * factor^(n-1),
    capped, then +/- jitter (a fraction), never below zero."""
    steps = max(0, attempt - 1)
    # min() before the power would overflow for absurd attempt counts.
    delay = cap if steps > 64 else min(cap, base * factor**steps)
    if jitter:
        delay *= 1.0 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, delay)


def choose_tier(delay: float, tiers: tuple[tuple[str, int], ...] = RETRY_TIERS) -> str:
    """The largest tier not longer than the wanted delay (the mover holds a record until its
    not_before anyway, so a shorter tier only costs a wait in the mover); the shortest tier
    when the delay is below all of them."""
    ordered = sorted(tiers, key=lambda t: t[1])
    chosen = ordered[0][0]
    for name, seconds in ordered:
        if seconds <= delay:
            chosen = name
    return chosen


def retry_envelope(
    env: Envelope,
    recipients: Iterable[str],
    *,
    not_before: float,
    last_error: str,
    count_attempt: bool = True,
) -> Envelope:
    """The envelope of a retry record: only the recipients still to try, the attempt counted
    (not for a throttled message that was never tried), due at not_before."""
    return env.model_copy(
        update={
            "recipients": tuple(recipients),
            "attempt": env.attempt + 1 if count_attempt else env.attempt,
            "not_before": not_before,
            "last_error": last_error[:500],
        }
    )


def retry_record(
    env: Envelope, value: bytes, tier: str
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """(topic, key, value, headers) of a retry record; the value (message bytes) is unchanged."""
    return (
        retry_topic(tier),
        env.routing_key.encode(),
        value,
        [(ENVELOPE_HEADER, encode_envelope(env))],
    )
