"""The unengaged policy on a simulated clock (the events' ts): mailsluice/engagement/policy.py."""

from __future__ import annotations

from typing import Any

from mailsluice.contracts.engagement import DAY_S, Engagement
from mailsluice.contracts.events import Event, EventType
from mailsluice.engagement.policy import (
    HygienePolicy,
    Step,
    dry_run,
    policy_for,
    report,
    step,
    unengaged,
)
from mailsluice.tenancy.model import parse_tenants

T0 = 1_700_000_000.0
ON = HygienePolicy(enabled=True, deliveries=10, days=90)


def ev(kind: EventType, day: float, **fields: Any) -> Event:
    return Event(type=kind, ts=T0 + day * DAY_S, tenant="acme", recipient="A@x.test", **fields)


def run(events: list[Event], rules: HygienePolicy = ON) -> tuple[Engagement | None, list[Step]]:
    record: Engagement | None = None
    steps = []
    for event in events:
        found = step(record, event, rules)
        steps.append(found)
        record = found.record or record
    return record, steps


def deliveries(n: int, every_days: float, start: float = 0.0) -> list[Event]:
    return [ev(EventType.DELIVERY, start + i * every_days) for i in range(n)]


def test_ten_deliveries_over_ninety_days_without_an_open_suppress_at_the_tenth() -> None:
    record, steps = run(deliveries(10, 10))  # days 0..90
    assert [s.suppress for s in steps] == [False] * 9 + [True]
    assert record is not None and record.deliveries == 10
    assert record.address == "a@x.test" and record.tenant == "acme"
    assert record.unengaged_at == T0 + 90 * DAY_S


def test_ten_deliveries_in_less_than_ninety_days_are_not_enough_yet() -> None:
    _, steps = run(deliveries(10, 9))  # days 0..81
    assert not any(s.suppress for s in steps)
    _, steps = run([*deliveries(10, 9), ev(EventType.DELIVERY, 91)])
    assert steps[-1].suppress


def test_ninety_days_with_fewer_deliveries_are_not_enough() -> None:
    _, steps = run(deliveries(9, 20))  # days 0..160, nine deliveries
    assert not any(s.suppress for s in steps)


def test_a_human_open_resets_the_count_and_a_machine_open_does_not() -> None:
    human = [*deliveries(5, 10), ev(EventType.OPEN, 45), *deliveries(5, 10, start=50)]
    record, steps = run(human)
    assert not any(s.suppress for s in steps)
    assert record is not None and (record.deliveries, record.last_engaged) == (5, T0 + 45 * DAY_S)
    machine = [*deliveries(5, 10), ev(EventType.OPEN, 45, machine="privacy_proxy")]
    _, steps = run([*machine, *deliveries(5, 10, start=50)])
    assert steps[-1].suppress


def test_the_days_count_from_the_last_engagement() -> None:
    events = [ev(EventType.CLICK, 0), *deliveries(10, 5, start=1)]  # days 1..46
    _, steps = run(events)
    assert not any(s.suppress for s in steps)
    _, steps = run([*events, ev(EventType.DELIVERY, 91)])
    assert steps[-1].suppress


def test_a_suppressed_address_that_engages_again_is_lifted_once() -> None:
    record, _ = run(deliveries(10, 10))
    lifted = step(record, ev(EventType.CLICK, 95), ON)
    assert lifted.lift and lifted.record is not None and lifted.record.unengaged_at == 0
    again = step(lifted.record, ev(EventType.OPEN, 96), ON)
    assert not again.lift
    machine = step(record, ev(EventType.CLICK, 95, machine="scanner"), ON)
    assert machine == Step()


def test_suppressed_once_and_not_again_at_each_delivery() -> None:
    _, steps = run(deliveries(12, 10))
    assert [s.suppress for s in steps].count(True) == 1


def test_out_of_order_deliveries_before_an_engagement_do_not_count() -> None:
    record, _ = run(
        [ev(EventType.OPEN, 50), ev(EventType.DELIVERY, 40), ev(EventType.DELIVERY, 60)]
    )
    assert record is not None
    assert (record.deliveries, record.first_delivered) == (1, T0 + 40 * DAY_S)


def test_a_disabled_policy_or_no_tenant_scope_suppresses_nothing() -> None:
    _, steps = run(deliveries(10, 10), HygienePolicy(enabled=False))
    assert not any(s.suppress for s in steps)
    record = None
    for event in deliveries(10, 10):
        found = step(record, event, ON, suppressible=False)
        assert not found.suppress
        record = found.record


def test_other_events_change_nothing() -> None:
    assert step(None, ev(EventType.BOUNCE, 1), ON) == Step()
    assert step(None, Event(type=EventType.DELIVERY, ts=T0), ON) == Step()  # no recipient


def test_a_tenants_block_overrides_the_default_field_by_field() -> None:
    tenants = parse_tenants(
        {
            "acme": {"pools": ["p"], "domains": ["acme.test"], "hygiene": {"enabled": True}},
            "beta": {"pools": ["p"], "domains": ["beta.test"], "hygiene": {"days": 30}},
            "gamma": {"pools": ["p"], "domains": ["gamma.test"]},
        }
    )
    default = HygienePolicy(enabled=False, deliveries=10, days=90)
    assert policy_for(default, tenants["acme"]) == HygienePolicy(True, 10, 90)
    assert policy_for(default, tenants["beta"]) == HygienePolicy(False, 10, 30)
    assert policy_for(default, tenants["gamma"]) == default
    assert policy_for(default, None) == default


def test_the_dry_run_lists_what_the_policy_would_suppress_enabled_or_not() -> None:
    quiet, _ = run(deliveries(10, 10), HygienePolicy(enabled=False))
    engaged, _ = run([*deliveries(9, 10), ev(EventType.OPEN, 85), ev(EventType.DELIVERY, 90)])
    assert quiet is not None and engaged is not None
    now = T0 + 91 * DAY_S
    assert unengaged(quiet, ON, now) and not unengaged(engaged, ON, now)
    found = dry_run([engaged, quiet], HygienePolicy(enabled=False), now)
    assert [(v.address, v.deliveries, v.suppressed) for v in found] == [("a@x.test", 10, False)]
    body = report("acme", [engaged, quiet], ON, now, limit=0)
    assert (body["addresses"], body["unengaged"], body["listed"]) == (2, 1, [])
