"""When a failed batch is tried again, on which delay tier it waits, and when it is given up.

A batch is retried after each failure with the delays of the schedule (the last one repeats),
each stretched by up to `jitter` of itself so endpoints that failed together do not all come
back at once, until `retry_for_s` has passed since its first attempt: the first failure after
that dead-letters it. So the last attempt comes at least `retry_for_s` after the first.

Pure: the caller passes the clock and the random fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailsluice.contracts.topics import WEBHOOK_RETRY_TIERS

# Standard Webhooks' example schedule, shortened at the start and capped at 6 h.
DEFAULT_DELAYS_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 21600)
DEFAULT_RETRY_FOR_S = 24 * 3600.0


@dataclass(frozen=True)
class RetrySchedule:
    delays_s: Sequence[float] = DEFAULT_DELAYS_S
    retry_for_s: float = DEFAULT_RETRY_FOR_S
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.delays_s or min(self.delays_s) <= 0:
            raise ValueError("a retry schedule needs positive delays")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction below 1")

    def next_attempt(
        self, attempts: int, first_attempt: float, now: float, rand: float = 0.0
    ) -> float | None:
        """When to try again after the `attempts`-th attempt failed at `now`; None when the
        batch has been retried for `retry_for_s` already (dead-letter it). `rand` in [0, 1)."""
        if now - first_attempt >= self.retry_for_s:
            return None
        delay = self.delays_s[min(max(attempts, 1), len(self.delays_s)) - 1]
        return now + delay * (1 + self.jitter * rand)


def tier_for(delay_s: float, tiers: Sequence[tuple[str, int]] = WEBHOOK_RETRY_TIERS) -> str:
    """The largest tier not longer than the delay (the first for shorter delays): a batch is
    never held back past its due time by its tier, only by the retry loop's poll."""
    chosen = tiers[0][0]
    for name, seconds in tiers:
        if seconds <= delay_s:
            chosen = name
    return chosen
