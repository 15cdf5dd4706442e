"""When an address is unengaged, and how one event changes its engagement record: pure functions
of the record, the event and the policy, on the events' own clock (their `ts`).

- A delivery counts when it comes after the last engagement (events of different messages
  arrive out of order; a delivery before the engagement is not "since" it).
- A human open or click (Event.machine == "") resets the count; a machine's is ignored: a
  privacy proxy opens everything, a scanner clicks everything.
- Unengaged: at least `deliveries` deliveries since the last engagement (or the first
  delivery), spanning at least `days` days. Judged at each delivery, so an address is
  suppressed by the delivery that passes the policy (a time alone passes nothing: an address
  not sent to costs nothing).
- A suppressed address that engages again (an open of an older message) is lifted.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsluice.contracts.engagement import DAY_S, Engagement
from mailsluice.contracts.events import Event, EventType
from mailsluice.tenancy.model import Tenant

UNENGAGED = "unengaged"  # the suppression reason
KINDS = (EventType.DELIVERY, EventType.OPEN, EventType.CLICK)


@dataclass(frozen=True)
class HygienePolicy:
    enabled: bool = False
    deliveries: int = 10
    days: int = 90


def policy_for(default: HygienePolicy, tenant: Tenant | None) -> HygienePolicy:
    """The tenant's policy: its `hygiene` block's fields over the default's."""
    block = tenant.hygiene if tenant is not None else None
    if block is None:
        return default
    return HygienePolicy(
        enabled=default.enabled if block.enabled is None else block.enabled,
        deliveries=block.deliveries or default.deliveries,
        days=block.days or default.days,
    )


def unengaged(record: Engagement, policy: HygienePolicy, now: float) -> bool:
    """Whether the record passes the policy at `now` (enabled or not: the dry run asks too)."""
    since = record.since
    return bool(since) and (
        record.deliveries >= policy.deliveries and now - since >= policy.days * DAY_S
    )


def relevant(event: Event) -> bool:
    """Whether an event can change an address's engagement (worth routing)."""
    return event.type in KINDS and bool(event.recipient.strip())


@dataclass(frozen=True)
class Step:
    """What one event does: the new record (None: unchanged), and whether to suppress the
    address as unengaged in the tenant's scope or lift that suppression."""

    record: Engagement | None = None
    suppress: bool = False
    lift: bool = False


def step(
    record: Engagement | None, event: Event, policy: HygienePolicy, *, suppressible: bool = True
) -> Step:
    """The step for one event about `record`'s address (None: the address has no record yet).
    `suppressible`: whether the event's tenant has a scope to suppress in."""
    if not relevant(event):
        return Step()
    current = record or Engagement(
        tenant=event.tenant, address=event.recipient.strip().lower(), ts=event.ts
    )
    if event.type is EventType.DELIVERY:
        return _delivered(current, event.ts, policy, suppressible)
    if event.machine:
        return Step()
    if event.ts <= current.last_engaged:
        return Step()
    lift = bool(current.unengaged_at)
    engaged = replace_record(current, last_engaged=event.ts, deliveries=0, unengaged_at=0.0)
    return Step(engaged, lift=lift)


def _delivered(current: Engagement, ts: float, policy: HygienePolicy, suppressible: bool) -> Step:
    first = min(current.first_delivered or ts, ts)
    count = current.deliveries + (1 if ts > current.last_engaged else 0)
    updated = replace_record(
        current,
        first_delivered=first,
        last_delivered=max(current.last_delivered, ts),
        deliveries=count,
    )
    now = updated.last_delivered
    if (
        suppressible
        and policy.enabled
        and not updated.unengaged_at
        and unengaged(updated, policy, now)
    ):
        return Step(replace_record(updated, unengaged_at=now), suppress=True)
    return Step(updated)


def replace_record(record: Engagement, **changes: float | int) -> Engagement:
    return record.model_copy(update=changes)


@dataclass(frozen=True)
class Verdict:
    """One address of the dry-run report."""

    address: str
    deliveries: int
    since: float
    suppressed: bool  # already suppressed as unengaged


def dry_run(records: list[Engagement], policy: HygienePolicy, now: float) -> list[Verdict]:
    """The addresses the policy would suppress at `now`, by address; those the processors
    suppressed already are listed too (marked)."""
    found = [
        Verdict(r.address, r.deliveries, r.since, bool(r.unengaged_at))
        for r in records
        if r.unengaged_at or unengaged(r, policy, now)
    ]
    return sorted(found, key=lambda v: v.address)


def report(
    tenant: str, records: list[Engagement], rules: HygienePolicy, now: float, *, limit: int
) -> dict[str, object]:
    """The dry-run report of a tenant as JSON: the policy, how many addresses are known and
    would be suppressed, and the first `limit` of those (by address)."""
    found = dry_run(records, rules, now)
    return {
        "tenant": tenant,
        "policy": {"enabled": rules.enabled, "deliveries": rules.deliveries, "days": rules.days},
        "addresses": len(records),
        "unengaged": len(found),
        "listed": [
            {
                "address": v.address,
                "deliveries": v.deliveries,
                "since": v.since,
                "suppressed": v.suppressed,
            }
            for v in found[:limit]
        ],
    }
