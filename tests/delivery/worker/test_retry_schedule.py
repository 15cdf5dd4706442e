"""Retry schedule, tier choice and retry records."""

from __future__ import annotations

import random

import pytest

from mailsluice.contracts.envelope import Envelope, envelope_from_headers
from mailsluice.contracts.topics import retry_topic
from mailsluice.delivery.worker import retry_schedule as retry
from mailsluice.delivery.worker.settings import DeliverySettings


def _delay(attempt: int, jitter: float = 0.0, rng: random.Random | None = None) -> float:
    s = DeliverySettings()
    return retry.backoff(
        attempt,
        base=s.retry_base_s,
        factor=s.retry_factor,
        cap=s.retry_max_s,
        jitter=jitter,
        rng=rng,
    )


def test_default_schedule_is_postfix_like() -> None:
    assert [_delay(n) for n in range(1, 7)] == [300, 600, 1200, 2400, 4000, 4000]
    assert _delay(10_000) == 4000  # no overflow


def test_jitter_stays_within_ten_percent_and_varies() -> None:
    rng = random.Random(1)
    values = [_delay(2, jitter=0.1, rng=rng) for _ in range(500)]
    assert all(540 <= v <= 660 for v in values)
    assert max(values) - min(values) > 60  # really spread


@pytest.mark.parametrize(
    ("delay", "tier"),
    [
        (0, "1m"),
        (30, "1m"),
        (60, "1m"),
        (599, "1m"),
        (600, "10m"),
        (3599, "10m"),
        (3600, "1h"),
        (4000, "1h"),
        (10**6, "1h"),
    ],
)
def test_choose_tier_largest_not_longer(delay: float, tier: str) -> None:
    assert retry.choose_tier(delay) == tier


def test_retry_envelope_and_record_keep_the_message() -> None:
    env = Envelope(
        queue_id="Q",
        pool="default",
        sender="s@a.example",
        recipients=("x@b", "y@b", "z@b"),
        routing_key="b",
        received_at=100.0,
        attempt=2,
    )
    renv = retry.retry_envelope(env, ["y@b"], not_before=500.0, last_error="451 4.4.1 busy")
    assert renv.recipients == ("y@b",)
    assert renv.attempt == 3
    assert renv.not_before == 500.0
    assert renv.queue_id == "Q"
    assert renv.received_at == 100.0
    unchanged = retry.retry_envelope(
        env, env.recipients, not_before=1.0, last_error="t", count_attempt=False
    )
    assert unchanged.attempt == 2
    topic, key, value, headers = retry.retry_record(renv, b"body", "10m")
    assert topic == retry_topic("10m")
    assert key == b"b"
    assert value == b"body"
    assert envelope_from_headers(headers) == renv
