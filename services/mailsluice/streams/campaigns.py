"""Campaign counters: what one event adds to its campaign's counts, as pure functions of the
event and the JSON values the faust tables hold (streams/tally.py keeps the tables).

Counted per (tenant, campaign) from the events that name a campaign:

- reception: `accepted` += the recipients it queued (`Event.recipients`; 0 means 1 when the
  event names a recipient, else 0), and the same to its destination's accepted;
- rejection: `rejected` += 1; suppressed: `suppressed` += 1;
- delivery, bounce (hard or soft by `rules.event_failure`: hard = the address is dead),
  expiration: their count += 1 and one more final at their destination;
- transient failure: the recipient is deferred now; its next delivery, bounce, expiration or
  suppressed event ends that (a per-(queue id, recipient) entry, removed when final);
- complaint, unsubscribe: += 1 when the event names the campaign;
- open, click: the unique opens and clicks, raw and human (streams/engagement.py decides, from a
  per-(campaign, queue id, recipient) state entry the tally keeps).

Pending per destination = accepted there - finals there. A reception naming no routing key
(one SMTP transaction spans destinations) counts under "", and the finals its recipients get at
their real destinations beyond what was accepted there come off "" (`pending_of`). A recipient
suppressed just before an attempt counts in `accepted` and in `suppressed`; it stops being
pending only when it was deferred before (its entry says it was accepted), otherwise it stays
counted as pending: rare, since its entry must have been added while it waited.

Each value records the offset of the last event of the campaign's partition applied to it
(`o`), so an event replayed after a crash (faust commits source offsets after the changelog
writes, at least once) is not counted twice for that value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mailsluice.contracts.campaign_stats import (
    COUNTS,
    MAX_DESTINATIONS,
    MAX_POOLS,
    OTHER,
    CampaignStats,
)
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.routing import base_of
from mailsluice.streams import engagement
from mailsluice.streams.rules import event_failure

Json = dict[str, Any]
Deferral = Literal["start", "end"] | None

_FINALS = (EventType.DELIVERY, EventType.BOUNCE, EventType.EXPIRATION)
_SIMPLE = {
    EventType.REJECTION: "rejected",
    EventType.SUPPRESSED: "suppressed",
    EventType.DELIVERY: "delivered",
    EventType.EXPIRATION: "expired",
    EventType.COMPLAINT: "complaints",
    EventType.UNSUBSCRIBE: "unsubscribes",
}


@dataclass(frozen=True)
class Effect:
    """What one event changes: counter increments, its destination's accepted and finals, and
    the recipient's deferral."""

    counts: Mapping[str, int] = field(default_factory=dict)
    destination: str = ""
    accepted: int = 0
    finished: int = 0
    deferral: Deferral = None


def campaign_key(event: Event) -> str | None:
    """`tenant|campaign` of an event that names a campaign, else None (also for names holding
    the separator, which contracts/campaigns.py never lets in)."""
    if not event.campaign or "|" in event.campaign or "|" in event.tenant:
        return None
    return f"{event.tenant}|{event.campaign}"


def recipients_of(event: Event) -> int:
    if event.recipients > 0:
        return event.recipients
    return 1 if event.recipient.strip() else 0


def deferral_key(campaign: str, event: Event) -> str:
    return f"{campaign}|{event.queue_id}|{event.recipient.strip().lower()}"


def effect(event: Event, *, was_deferred: bool = False) -> Effect:
    """What `event` adds to its campaign; `was_deferred`: its recipient has a deferral entry."""
    destination = base_of(event.routing_key)
    kind = event.type
    if kind is EventType.RECEPTION:
        n = recipients_of(event)
        return Effect({"accepted": n}, destination, accepted=n)
    if kind is EventType.TRANSIENT_FAILURE:
        return Effect(destination=destination, deferral="start")
    if kind is EventType.BOUNCE:
        name = "bounced_hard" if event_failure(event) == "hard" else "bounced_soft"
        return Effect({name: 1}, destination, finished=1, deferral="end")
    simple = _SIMPLE.get(kind)
    if simple is None:
        return Effect()
    if kind in _FINALS:
        return Effect({simple: 1}, destination, finished=1, deferral="end")
    if kind is EventType.SUPPRESSED:
        # after acceptance only when it was deferred before (see the module's docstring)
        return Effect({simple: 1}, destination, finished=int(was_deferred), deferral="end")
    return Effect({simple: 1})


def engaged_key(campaign: str, event: Event) -> str:
    """The campaign's engagement state key of the event's message and recipient."""
    return f"{campaign}|{engagement.seen_key(event)}"


def with_engagement(eff: Effect, delta: Mapping[str, int]) -> Effect:
    """`eff` with an open's or click's deltas to the unique counts (streams/engagement.py)."""
    return replace(eff, counts=engagement.add(eff.counts, delta)) if delta else eff


def pool_of(event: Event, eff: Effect) -> str:
    """The pool an event shows the campaign's mail going through ("" for other events)."""
    return event.pool if eff.accepted or eff.finished else ""


# --- table values --------------------------------------------------------------------------------


def applied(value: Json | None, offset: int) -> bool:
    """Whether the event at `offset` of the campaign's partition is already in `value`."""
    return value is not None and int(value.get("o", -1)) >= offset


def add_counts(
    value: Json | None, eff: Effect, *, ts: float, offset: int, partition: int, pool: str = ""
) -> Json:
    """The campaign's counts value with `eff` added (the caller checked `applied`); `pool`, the
    event's, joins the pools the campaign's mail goes through (the ETA's caps and rates)."""
    old = value or {}
    counts = dict(old.get("c") or {})
    for name, n in eff.counts.items():
        counts[name] = int(counts.get(name, 0)) + n
    first = float(old.get("f") or ts)
    last = max(float(old.get("l") or 0.0), ts)
    pools = list(old.get("pools") or [])
    if pool and pool not in pools and len(pools) < MAX_POOLS:
        pools = sorted([*pools, pool])
    return {
        "c": counts,
        "o": offset,
        "p": partition,
        "f": min(first, ts),
        "l": last,
        "pools": pools,
    }


def add_destination(value: Json | None, eff: Effect, *, offset: int, partition: int) -> Json:
    """A (campaign, destination) value with `eff`'s accepted and finals added."""
    old = value or {}
    return {
        "a": int(old.get("a", 0)) + eff.accepted,
        "f": int(old.get("f", 0)) + eff.finished,
        "o": offset,
        "p": partition,
    }


def pending_of(destinations: Mapping[str, Json]) -> dict[str, int]:
    """Pending recipients per destination from each one's accepted and finals; finals beyond a
    destination's accepted belong to receptions that named none ("")."""
    pending: dict[str, int] = {}
    extra = 0
    for name, value in destinations.items():
        if name == "":
            continue
        left = int(value.get("a", 0)) - int(value.get("f", 0))
        if left > 0:
            pending[name] = left
        else:
            extra -= left
    unrouted = destinations.get("")
    if unrouted is not None:
        left = int(unrouted.get("a", 0)) - int(unrouted.get("f", 0)) - extra
        if left > 0:
            pending[""] = left
    return largest(pending, MAX_DESTINATIONS)


def largest(pending: Mapping[str, int], keep: int) -> dict[str, int]:
    """The `keep` largest entries; the rest summed under OTHER."""
    ranked = sorted(pending.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:keep])
    rest = sum(n for _, n in ranked[keep:])
    if rest:
        kept[OTHER] = rest
    return kept


def snapshot(
    key: str,
    counts: Json,
    destinations: Mapping[str, Json],
    deferred: int,
    *,
    now: float,
) -> CampaignStats:
    """The record published for campaign `key` (tenant|campaign)."""
    tenant, _, campaign = key.partition("|")
    found = counts.get("c") or {}
    numbers = {name: int(found.get(name, 0)) for name in COUNTS}
    return CampaignStats(
        tenant=tenant,
        campaign=campaign,
        ts=now,
        first_event=float(counts.get("f") or 0.0),
        last_event=float(counts.get("l") or 0.0),
        deferred=max(0, deferred),
        pending=pending_of(destinations),
        pools=tuple(counts.get("pools") or ()),
        **numbers,
    )


def tally(events: Iterable[Event]) -> dict[str, CampaignStats]:
    """Every campaign's stats after `events` in order, as the agent counts them (one offset per
    event): the reference the agent is tested against, and the whole algorithm in one place."""
    counts: dict[str, Json] = {}
    destinations: dict[str, dict[str, Json]] = {}
    deferrals: dict[str, set[str]] = {}
    engaged: dict[str, Json] = {}
    for offset, event in enumerate(events):
        key = campaign_key(event)
        if key is None:
            continue
        held = deferrals.setdefault(key, set())
        recipient = deferral_key(key, event)
        eff = effect(event, was_deferred=recipient in held)
        if engagement.tracked(event):
            seen = engaged_key(key, event)
            engaged[seen], delta = engagement.observe(engaged.get(seen), event)
            eff = with_engagement(eff, delta)
        counts[key] = add_counts(
            counts.get(key), eff, ts=event.ts, offset=offset, partition=0, pool=pool_of(event, eff)
        )
        if eff.accepted or eff.finished:
            dests = destinations.setdefault(key, {})
            dests[eff.destination] = add_destination(
                dests.get(eff.destination), eff, offset=offset, partition=0
            )
        if eff.deferral == "start":
            held.add(recipient)
        elif eff.deferral == "end":
            held.discard(recipient)
    return {
        key: snapshot(key, value, destinations.get(key, {}), len(deferrals[key]), now=0.0)
        for key, value in counts.items()
    }
