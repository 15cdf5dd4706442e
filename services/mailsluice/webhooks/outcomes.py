"""What becomes of a batch after one attempt: delivered, retried on a delay tier, or dead.
Pure: the caller passes the clock and the random fraction, and writes the record."""

from __future__ import annotations

from dataclasses import dataclass

from mailsluice.contracts.topics import WEBHOOK_DEAD_TOPIC, webhook_retry_topic
from mailsluice.contracts.webhook_records import PendingBatch
from mailsluice.webhooks.schedule import RetrySchedule, tier_for

DELIVERED, RETRIED, DEAD = "delivered", "retried", "dead"
# A Retry-After longer than this is not waited for beyond the schedule's own delay.
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True)
class Result:
    """One POST: `status` 0 when no answer came; `permanent` failures are never retried (the
    SSRF check refused the address)."""

    ok: bool
    status: int = 0
    error: str = ""
    permanent: bool = False
    retry_after_s: float = 0.0

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver wants no more (Standard Webhooks: disable the endpoint)."""
        return self.status == 410


@dataclass(frozen=True)
class Outcome:
    result: str  # DELIVERED, RETRIED or DEAD
    record: PendingBatch | None = None  # what to write, and where
    topic: str | None = None


def dead(batch: PendingBatch, reason: str, now: float) -> Outcome:
    record = batch.model_copy(update={"reason": reason, "dead_at": now})
    return Outcome(DEAD, record, WEBHOOK_DEAD_TOPIC)


def after_attempt(
    batch: PendingBatch, result: Result, schedule: RetrySchedule, now: float, rand: float = 0.0
) -> Outcome:
    """`batch` as it was before the attempt made at `now`."""
    if result.ok:
        return Outcome(DELIVERED)
    first = batch.first_attempt or now
    tried = batch.model_copy(
        update={"attempts": batch.attempts + 1, "first_attempt": first, "last_error": result.error}
    )
    if result.permanent:
        return dead(tried, result.error, now)
    if result.gone:
        return dead(tried, "the endpoint answered 410 Gone (paused)", now)
    due = schedule.next_attempt(tried.attempts, first, now, rand)
    if due is None:
        return dead(tried, f"failed for {now - first:.0f} s: {result.error}", now)
    due = max(due, now + min(result.retry_after_s, MAX_RETRY_AFTER_S))
    record = tried.model_copy(update={"not_before": due})
    return Outcome(RETRIED, record, webhook_retry_topic(tier_for(due - now)))
