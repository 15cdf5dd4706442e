"""support.provider_model: a provider's per-source limits on a simulated clock."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from support.provider_model import (
    PROVIDERS,
    R220_READY,
    R250_MAIL,
    R250_QUEUED,
    R250_RCPT,
    ProviderLimits,
    ProviderModel,
    Reply,
    SourceStats,
    random_limits,
)

from mailsluice.policy.replies import ReplyClass

A = "127.0.0.21"
B = "127.0.0.22"
ISP = PROVIDERS["isp"][0]


BASE = ProviderLimits(
    rate_per_min=60.0,
    burst=3,
    connections=2,
    per_connection=5,
    penalty_deferrals=3,
    penalty_window_s=10.0,
    block_s=30.0,
)


def model(**overrides: Any) -> ProviderModel:
    return ProviderModel(replace(BASE, **overrides), ISP)


def send(m: ProviderModel, source: str, now: float) -> Reply:
    """One message on an open connection: RCPT, then DATA if RCPT was accepted."""
    reply = m.rcpt(source, now)
    return m.data(source, now) if reply.ok else reply


def test_a_rested_source_sends_its_burst_at_once_then_one_message_per_token() -> None:
    m = model(rate_per_min=60.0, burst=3)
    assert [send(m, A, 0.0).ok for _ in range(4)] == [True, True, True, False]
    assert not send(m, A, 0.99).ok  # 0.99 of a token since the last was taken
    assert send(m, A, 1.0).ok
    assert not send(m, A, 1.0).ok
    assert m.stats(A) == SourceStats(accepted=4, deferred=3, attempts=7)


def test_the_bucket_refills_up_to_its_capacity_only() -> None:
    m = model(rate_per_min=120.0, burst=3)
    for _ in range(3):
        assert send(m, A, 0.0).ok
    assert m.tokens(A, 0.5) == pytest.approx(1.0)
    assert m.tokens(A, 100.0) == 3.0
    assert [send(m, A, 100.0).ok for _ in range(4)] == [True, True, True, False]


def test_a_clock_that_goes_back_adds_no_tokens() -> None:
    m = model(burst=1)
    assert send(m, A, 10.0).ok
    assert not send(m, A, 5.0).ok
    assert m.tokens(A, 10.5) == pytest.approx(0.5)


def test_deferral_at_rcpt_answers_rcpt_with_the_rate_reply() -> None:
    m = model(burst=1, defer_at="rcpt")
    assert m.rcpt(A, 0.0) == R250_RCPT
    assert m.data(A, 0.0) == R250_QUEUED
    deferred = m.rcpt(A, 0.0)
    assert deferred.line == "450 4.2.1 rate limit exceeded, slow down"
    assert m.stats(A).deferred == 1


def test_deferral_at_data_accepts_every_rcpt_and_answers_the_end_of_data() -> None:
    m = model(burst=1, defer_at="data")
    assert m.rcpt(A, 0.0) == R250_RCPT
    assert m.data(A, 0.0) == R250_QUEUED
    assert m.rcpt(A, 0.0) == R250_RCPT
    assert m.data(A, 0.0).line == "450 4.2.1 rate limit exceeded, slow down"
    assert m.stats(A) == SourceStats(accepted=1, deferred=1, attempts=2)


def test_connections_over_the_cap_are_refused_at_the_greeting_until_one_closes() -> None:
    m = model(connections=2)
    assert m.connect(A, 0.0) == R220_READY
    assert m.connect(A, 0.0) == R220_READY
    refused = m.connect(A, 0.0)
    assert refused.line == "421 4.7.0 too many connections from your IP"
    assert m.open_connections(A) == 2  # a refused connection is not counted open
    m.disconnect(A, 1.0)
    assert m.connect(A, 1.0) == R220_READY
    assert m.stats(A).max_concurrent == 2
    assert m.stats(A).refused_connections == 1


def test_mail_past_the_per_connection_cap_gets_the_reconnect_reply() -> None:
    m = model(per_connection=2)
    assert m.mail(A, 0, 0.0) == R250_MAIL
    assert m.mail(A, 1, 0.0) == R250_MAIL
    assert m.mail(A, 2, 0.0).line == "421 4.7.0 too many messages, reconnect"
    assert m.mail(A, 0, 0.0) == R250_MAIL  # a new connection
    assert m.stats(A).per_connection == 1


def test_a_source_that_keeps_sending_after_deferrals_is_blocked_then_released() -> None:
    m = model(burst=1, rate_per_min=6.0, penalty_deferrals=3, penalty_window_s=10.0, block_s=30.0)
    assert send(m, A, 0.0).ok
    for t in (1.0, 2.0, 3.0):
        assert not send(m, A, t).ok
    assert not m.blocked(A, 3.0)  # three deferrals: not beyond the limit yet
    assert not send(m, A, 4.0).ok  # the fourth within 10 s
    assert m.blocked(A, 4.0)
    assert m.blocked_until(A) == 34.0
    block = (
        "421 4.7.0 Your IP 127.0.0.21 is temporarily blocked after repeated deferrals; "
        "try again later"
    )
    assert m.connect(A, 20.0).line == block
    assert m.mail(A, 0, 33.9).line == block
    assert m.connect(A, 34.0) == R220_READY
    assert m.mail(A, 0, 34.0) == R250_MAIL
    assert send(m, A, 34.0).ok  # the bucket refilled meanwhile
    stats = m.stats(A)
    assert (stats.blocks, stats.block_replies, stats.deferred) == (1, 2, 4)


def test_deferrals_spread_wider_than_the_window_never_block() -> None:
    m = model(burst=1, rate_per_min=0.1, penalty_deferrals=3, penalty_window_s=10.0)
    assert send(m, A, 0.0).ok
    for i in range(40):
        assert not send(m, A, 1.0 + i * 3.4).ok  # at most three within any 10 s
    assert not m.blocked(A, 200.0)
    assert m.stats(A).blocks == 0


def test_deferrals_during_a_block_do_not_extend_it() -> None:
    m = model(burst=1, rate_per_min=0.1, penalty_deferrals=0, block_s=30.0)
    assert send(m, A, 0.0).ok
    assert not send(m, A, 1.0).ok
    assert m.blocked_until(A) == 31.0
    assert not send(m, A, 2.0).ok  # a transaction already past MAIL when the block began
    assert m.blocked_until(A) == 31.0
    assert m.stats(A).blocks == 1


def test_every_source_has_its_own_bucket_connections_and_block() -> None:
    m = model(burst=2, rate_per_min=6.0, connections=1, penalty_deferrals=1, block_s=60.0)
    assert m.connect(A, 0.0) == R220_READY
    assert m.connect(B, 0.0) == R220_READY
    assert [send(m, A, 0.0).ok for _ in range(4)] == [True, True, False, False]
    assert m.blocked(A, 0.0)
    assert not m.blocked(B, 0.0)
    assert [send(m, B, 0.0).ok for _ in range(2)] == [True, True]
    assert m.mail(B, 0, 0.0) == R250_MAIL
    assert m.stats(A).accepted == m.stats(B).accepted == 2
    total = m.stats()
    assert (total.accepted, total.deferred, total.blocks, total.max_concurrent) == (4, 2, 1, 1)
    assert sorted(m.sources()) == [A, B]


def test_ideal_seconds_is_the_burst_then_the_rate_per_source() -> None:
    m = model(rate_per_min=60.0, burst=10)
    assert m.ideal_seconds(0) == 0.0
    assert m.ideal_seconds(10) == 0.0
    assert m.ideal_seconds(70) == pytest.approx(60.0)
    assert m.ideal_seconds(140, sources=2) == pytest.approx(60.0)
    assert m.ideal_seconds(141, sources=2) == pytest.approx(61.0)  # one source sends 71


def test_ideal_seconds_is_what_a_sender_at_the_limits_achieves() -> None:
    """A sender that sends whenever it has a token finishes in exactly ideal_seconds."""
    m = model(rate_per_min=120.0, burst=4, penalty_deferrals=0)
    now, sent, step = 0.0, 0, 0.5
    while sent < 50:
        while m.tokens(A, now) >= 1.0 and sent < 50:
            assert send(m, A, now).ok
            sent += 1
        if sent < 50:
            now += step
    assert now == pytest.approx(m.ideal_seconds(50))
    assert m.stats(A).deferred == 0


def test_replies_name_the_source_where_the_text_asks() -> None:
    google = PROVIDERS["google"][1]
    text = google.rate.for_source(A).text
    assert text.startswith("[127.0.0.21] Our system has detected an unusual rate")
    yahoo = PROVIDERS["yahoo"][0]
    assert yahoo.per_connection.line == (
        "421 Max message per connection reached, closing transmission channel"
    )
    assert (yahoo.per_connection.enhanced, yahoo.per_connection.bare) == ("4.0.0", True)


def test_every_provider_has_a_reply_for_each_limit() -> None:
    assert set(PROVIDERS) == {"google", "yahoo", "microsoft", "isp"}
    for variants in PROVIDERS.values():
        for texts in variants:
            classes = texts.by_class()
            assert set(classes) - {ReplyClass.RATE, ReplyClass.REPUTATION} == {
                ReplyClass.CONNECTIONS,
                ReplyClass.PER_CONNECTION,
                ReplyClass.BLOCK,
            }
            assert all(not reply.ok for reply in classes.values())
            assert all(Reply.parse(reply.line) == reply for reply in classes.values())


def test_random_limits_cover_the_ranges_and_are_deterministic() -> None:
    drawn = [random_limits(random.Random(seed)) for seed in range(500)]
    assert drawn == [random_limits(random.Random(seed)) for seed in range(500)]
    rates = [d.rate_per_min for d in drawn]
    assert 10.0 <= min(rates) < 20.0 and 1500.0 < max(rates) <= 3000.0
    assert {d.connections for d in drawn} == set(range(1, 21))
    assert min(d.per_connection for d in drawn) == 5
    assert max(d.per_connection for d in drawn) == 100
    assert {d.defer_at for d in drawn} == {"rcpt", "data"}
    assert all(1 <= d.burst <= max(1, round(d.rate_per_min / 3)) for d in drawn)


def test_limits_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        ProviderLimits(rate_per_min=0.0, burst=1, connections=1, per_connection=1)
    with pytest.raises(ValueError, match="out of range"):
        ProviderLimits(rate_per_min=1.0, burst=0, connections=1, per_connection=1)
