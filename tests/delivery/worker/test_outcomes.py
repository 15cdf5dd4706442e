"""Outcomes of an attempt: events, retry records, expiry and bounce messages (pure)."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from support.delivery_worker import Result

from mailsluice.contracts.envelope import Envelope, envelope_from_headers
from mailsluice.contracts.events import Event, EventType, decode_event
from mailsluice.contracts.topics import EVENTS_TOPIC, queue_topic, retry_topic
from mailsluice.delivery.worker import outcomes
from mailsluice.delivery.worker.settings import DeliverySettings

NOW = 1_000_000.0


# A transport's result for one recipient, from this remote MX.
R = functools.partial(Result, remote="mx.b.example[127.0.0.5]:25")


class FakeDsn:
    def __init__(self) -> None:
        self.calls: list[tuple[Envelope, bytes, list[Any], str, float]] = []

    def __call__(
        self,
        env: Envelope,
        message: bytes,
        failures: list[Any],
        *,
        reporting_mta: str,
        now: float,
    ) -> bytes:
        self.calls.append((env, message, failures, reporting_mta, now))
        return b"DSN for " + env.queue_id.encode()


def _env(**kw: Any) -> Envelope:
    base: dict[str, Any] = dict(
        queue_id="01QUEUEID",
        pool="default",
        sender="alice@a.example",
        recipients=("x@b.example", "y@b.example", "z@b.example"),
        routing_key="b.example",
        received_at=NOW - 10,
        attempt=0,
    )
    base.update(kw)
    return Envelope(**base)


def _events(plan: outcomes.Plan) -> list[Event]:
    return [decode_event(p.value) for p in plan.produces if p.topic == EVENTS_TOPIC]


def _retries(plan: outcomes.Plan) -> list[outcomes.Produce]:
    return [p for p in plan.produces if p.topic.startswith("mailsluice.retry.")]


def _plan(env: Envelope, results: list[Any], dsn: FakeDsn | None = None, **settings: Any):
    return outcomes.plan_outcome(
        env,
        b"Subject: hi\r\n\r\nbody\r\n",
        results,
        now=NOW,
        settings=DeliverySettings(**settings),
        build_dsn=dsn,
        rng=random.Random(3),
    )


def test_mixed_results_give_one_event_each_one_retry_and_one_dsn() -> None:
    dsn = FakeDsn()
    env = _env()
    plan = _plan(
        env,
        [
            R("x@b.example", 250, "2.0.0", "ok"),
            R("y@b.example", 450, "4.2.1", "mailbox busy"),
            R("z@b.example", 550, "5.1.1", "no such user"),
        ],
        dsn,
    )
    events = _events(plan)
    assert [(e.type, e.recipient) for e in events] == [
        (EventType.DELIVERY, "x@b.example"),
        (EventType.BOUNCE, "z@b.example"),
        (EventType.TRANSIENT_FAILURE, "y@b.example"),
    ]
    bounce = events[1]
    assert (bounce.code, bounce.enhanced, bounce.text) == (550, "5.1.1", "no such user")
    assert bounce.remote == "mx.b.example[127.0.0.5]:25"
    assert all(e.attempt == 1 and e.queue_id == env.queue_id for e in events)
    assert plan.delivered == ["x@b.example"]
    assert plan.deferred == ["y@b.example"]
    assert plan.bounced == ["z@b.example"]
    (retry_rec,) = _retries(plan)
    renv = envelope_from_headers(retry_rec.headers)
    assert renv.recipients == ("y@b.example",)
    assert renv.attempt == 1
    assert 270 <= renv.not_before - NOW <= 330  # 300 s +/- 10%
    assert "450" in renv.last_error
    assert retry_rec.topic == retry_topic("1m")
    assert retry_rec.key == b"b.example"
    assert retry_rec.value == b"Subject: hi\r\n\r\nbody\r\n"
    # One DSN for the bounced recipient, from the null sender back to alice.
    assert len(dsn.calls) == 1
    assert [f.recipient for f in dsn.calls[0][2]] == ["z@b.example"]
    (queued,) = [p for p in plan.produces if p.topic == queue_topic("default")]
    denv = envelope_from_headers(queued.headers)
    assert denv.sender == ""
    assert denv.recipients == ("alice@a.example",)
    assert denv.routing_key == "a.example"
    assert denv.queue_id != env.queue_id
    assert queued.value == b"DSN for 01QUEUEID"
    assert plan.dsn


def test_missing_result_is_retried_not_lost() -> None:
    plan = _plan(_env(recipients=("x@b.example",)), [])
    assert plan.deferred == ["x@b.example"]
    assert len(_retries(plan)) == 1


def test_later_attempts_use_longer_tiers() -> None:
    plan = _plan(_env(attempt=4), [R(r, 421, "4.7.0", "later") for r in _env().recipients])
    (retry_rec,) = _retries(plan)
    renv = envelope_from_headers(retry_rec.headers)
    assert renv.attempt == 5
    assert 3600 <= renv.not_before - NOW <= 4400
    assert retry_rec.topic == retry_topic("1h")


def test_expiry_turns_transient_into_expiration_and_bounce() -> None:
    dsn = FakeDsn()
    env = _env(received_at=NOW - 259_000, attempt=30, recipients=("x@b.example",))
    plan = _plan(env, [R("x@b.example", 451, "4.4.1", "connection refused")], dsn)
    assert plan.expired == ["x@b.example"]
    assert _retries(plan) == []
    (event,) = _events(plan)
    assert event.type == EventType.EXPIRATION
    assert event.code == 451
    (failure,) = dsn.calls[0][2]
    assert failure.enhanced == outcomes.EXPIRED_ENHANCED
    assert "connection refused" in failure.text


def test_short_expiry_setting() -> None:
    env = _env(received_at=NOW - 5, recipients=("x@b.example",))
    plan = _plan(env, [R("x@b.example", 451)], FakeDsn(), expiry_s=60)
    assert plan.expired == ["x@b.example"]


def test_no_dsn_for_null_sender_or_when_disabled() -> None:
    dsn = FakeDsn()
    plan = _plan(_env(sender=""), [R(r, 550, "5.1.1") for r in _env().recipients], dsn)
    assert plan.bounced == list(_env().recipients)
    assert dsn.calls == []
    assert not plan.dsn
    plan = _plan(_env(), [R(r, 550) for r in _env().recipients], dsn, bounces_enabled=False)
    assert dsn.calls == []
    assert all(p.topic == EVENTS_TOPIC for p in plan.produces)


def test_all_delivered_produces_only_events() -> None:
    plan = _plan(_env(), [R(r, 250, "2.0.0") for r in _env().recipients], FakeDsn())
    assert len(plan.produces) == 3
    assert all(p.key == b"01QUEUEID" for p in plan.produces)
    assert plan.retry_tier is None


def test_throttled_record_keeps_attempt_count() -> None:
    env = _env(attempt=2)
    rec = outcomes.plan_throttled(env, b"m", now=NOW, not_before=NOW + 7)
    renv = envelope_from_headers(rec.headers)
    assert renv.attempt == 2
    assert renv.not_before == NOW + 7
    assert renv.recipients == env.recipients
    assert rec.topic == retry_topic("1m")
    assert renv.last_error == outcomes.THROTTLED_ERROR
    assert renv.held == "throttled"


def test_a_hold_past_the_expiry_brings_the_message_back_at_its_expiry() -> None:
    expires = NOW + 3600.0
    # a short hold: back half a horizon before its slot
    assert outcomes.throttled_due(NOW, 60.0, 10.0, expires) == NOW + 55.0
    # a suspension of a week: back at its expiry (and expired then), not expired at once
    assert outcomes.throttled_due(NOW, 7 * 86400.0, 10.0, expires) == expires
    assert outcomes.throttled_due(expires, 60.0, 10.0, expires) is None


@pytest.mark.parametrize(
    ("held", "reason", "last_error"),
    [
        ("throttled", "", outcomes.THROTTLED_ERROR),
        ("throttled", "421 4.7.28 unusual rate", "421 4.7.28 unusual rate"),
        ("suspended", "suspended by operator until 2026-01-01T12:00:00Z", None),
        ("suspended", "", ""),  # never the throttle text for another hold
        ("blocked", "421 4.7.0 blocked, try in 10 minutes", None),
        ("blocked", "", ""),
        ("warmup", "warm-up cap of gmail reached for today", None),
        ("warmup", "", ""),
        ("", "", outcomes.THROTTLED_ERROR),  # a deferral is always a hold
    ],
)
def test_throttled_record_says_which_hold_and_why(
    held: str, reason: str, last_error: str | None
) -> None:
    # an earlier attempt's reply is not why the message waits now
    env = _env(attempt=1, last_error="452 4.2.2 Mailbox full", not_before=NOW - 1)
    rec = outcomes.plan_throttled(
        env, b"m", now=NOW, not_before=NOW + 4000, held=held, reason=reason
    )
    renv = envelope_from_headers(rec.headers)
    assert renv.held == (held or "throttled")
    assert renv.last_error == (reason if last_error is None else last_error)
    assert (renv.attempt, renv.not_before) == (1, NOW + 4000)
    assert rec.topic == retry_topic("1h")


def test_a_failure_retry_of_a_once_held_message_is_not_held() -> None:
    env = _env(held="suspended", last_error="suspended by operator")
    plan = _plan(env, [R(r, 452, "4.2.2", "Mailbox full") for r in env.recipients])
    (retry,) = _retries(plan)
    renv = envelope_from_headers(retry.headers)
    assert (renv.held, renv.last_error, renv.attempt) == ("", "452 4.2.2 Mailbox full", 1)


def test_policy_bounce_turns_transient_into_permanent() -> None:
    res = outcomes.as_permanent(R("x@b.example", 421, "4.7.0", "TS04 will not succeed"))
    assert (res.code, res.enhanced, res.kind) == (521, "5.7.0", "permanent")
    assert "TS04" in res.text
    assert res.remote == "mx.b.example[127.0.0.5]:25"
    odd = outcomes.as_permanent(R("x@b.example", 451, "", "no enhanced code"))
    assert (odd.code, odd.enhanced) == (551, "5.0.0")
