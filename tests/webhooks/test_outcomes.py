"""What follows an attempt: nothing after a 2xx; a delay tier record with the attempt count,
the first attempt's time and the next not_before; a dead letter past the schedule, for a
refused address, or a 410."""

from __future__ import annotations

from mailsluice.contracts.topics import WEBHOOK_DEAD_TOPIC, webhook_retry_topic
from mailsluice.contracts.webhook_records import PendingBatch
from mailsluice.webhooks.outcomes import DEAD, DELIVERED, RETRIED, Result, after_attempt
from mailsluice.webhooks.schedule import RetrySchedule

SCHEDULE = RetrySchedule((30, 600), retry_for_s=3600, jitter=0)
BATCH = PendingBatch(id="msg_x", tenant="acme", endpoint="main", events=2, body="{}")


def test_a_2xx_is_delivered_and_writes_nothing() -> None:
    outcome = after_attempt(BATCH, Result(True, 204), SCHEDULE, now=100)
    assert (outcome.result, outcome.record, outcome.topic) == (DELIVERED, None, None)


def test_a_failure_waits_on_a_delay_tier_and_keeps_its_id_and_body() -> None:
    outcome = after_attempt(BATCH, Result(False, 503, "HTTP 503"), SCHEDULE, now=100)
    assert outcome.result == RETRIED and outcome.topic == webhook_retry_topic("30s")
    rec = outcome.record
    assert rec is not None
    assert (rec.attempts, rec.first_attempt, rec.not_before) == (1, 100, 130)
    assert (rec.id, rec.body, rec.last_error) == ("msg_x", "{}", "HTTP 503")
    second = after_attempt(rec, Result(False, error="timeout"), SCHEDULE, now=131)
    assert second.record is not None and second.record.not_before == 731
    assert second.topic == webhook_retry_topic("10m") and second.record.first_attempt == 100


def test_retry_after_pushes_the_next_attempt_back() -> None:
    outcome = after_attempt(BATCH, Result(False, 429, retry_after_s=120), SCHEDULE, now=0)
    assert outcome.record is not None and outcome.record.not_before == 120
    assert outcome.topic == webhook_retry_topic("2m")


def test_past_the_schedule_a_batch_is_dead_with_its_last_error() -> None:
    tried = BATCH.model_copy(update={"attempts": 5, "first_attempt": 1000})
    outcome = after_attempt(tried, Result(False, 500, "HTTP 500"), SCHEDULE, now=4600)
    assert outcome.result == DEAD and outcome.topic == WEBHOOK_DEAD_TOPIC
    assert outcome.record is not None and outcome.record.attempts == 6
    assert "HTTP 500" in outcome.record.reason and outcome.record.dead_at == 4600


def test_a_refused_address_and_a_410_are_dead_at_once() -> None:
    refused = after_attempt(
        BATCH, Result(False, error="address refused", permanent=True), SCHEDULE, 0
    )
    gone = after_attempt(BATCH, Result(False, 410, "HTTP 410"), SCHEDULE, 0)
    assert refused.result == gone.result == DEAD
    assert refused.record is not None and refused.record.reason == "address refused"
    assert gone.record is not None and "410" in gone.record.reason
