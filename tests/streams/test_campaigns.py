"""Campaign counters (streams/campaigns.py): every event type, deferrals, pending per
destination, and a replayed event not counted twice."""

from __future__ import annotations

from typing import Any

import pytest

from mailsluice.contracts.campaign_stats import (
    OTHER,
    CampaignStats,
    decode_stats,
    encode_stats,
    parse_stats_key,
    stats_key,
)
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.versioning import NewerSchema
from mailsluice.streams import campaigns
from mailsluice.streams.campaigns import Effect, effect, pending_of, tally

T, C = "acme", "spring-sale"


def ev(kind: EventType, rcpt: str = "", queue_id: str = "q1", **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "tenant": T,
        "campaign": C,
        "queue_id": queue_id,
        "recipient": rcpt,
        "routing_key": "google#2",
        "pool": "default",
        "ts": 1000.0,
    }
    return Event(type=kind, **{**fields, **kw})


def one(events: list[Event]) -> CampaignStats:
    found = tally(events)
    assert list(found) == [f"{T}|{C}"]
    return found[f"{T}|{C}"]


def test_every_event_type_counts_where_it_should() -> None:
    stats = one(
        [
            ev(EventType.RECEPTION, "a@x.test", "qa"),
            ev(EventType.RECEPTION, "", "qs", recipients=5, routing_key=""),
            ev(EventType.REJECTION, "r@x.test"),
            ev(EventType.SUPPRESSED, "s@x.test", reason="tenant:acme"),
            ev(EventType.DELIVERY, "a@x.test", "qa", code=250),
            ev(EventType.BOUNCE, "h@x.test", "qs", code=550, enhanced="5.1.1", text="no such user"),
            ev(EventType.BOUNCE, "p@x.test", "qs", code=550, enhanced="5.7.1", text="spam"),
            ev(EventType.EXPIRATION, "e@x.test", "qs", code=421, enhanced="4.4.2"),
            ev(EventType.COMPLAINT, "a@x.test", "qa", reason="abuse"),
            ev(EventType.UNSUBSCRIBE, "a@x.test", "", scope="tenant:acme"),
            ev(EventType.DESTINATION_STATE, routing_key="google"),
        ]
    )
    assert (stats.accepted, stats.rejected, stats.suppressed) == (6, 1, 1)
    assert stats.requested == 8
    assert (stats.delivered, stats.bounced_hard, stats.bounced_soft, stats.expired) == (1, 1, 1, 1)
    assert (stats.complaints, stats.unsubscribes, stats.deferred) == (1, 1, 0)
    # 6 accepted, 4 final: the 5 of the SMTP reception named no destination; 3 of its
    # recipients' finals came at google beyond the 1 accepted there
    assert stats.pending == {"": 2}
    assert stats.pending_total == 2


def test_events_without_a_campaign_count_nowhere() -> None:
    assert tally([ev(EventType.RECEPTION, "a@x.test", campaign="")]) == {}
    assert tally([ev(EventType.RECEPTION, "a@x.test", campaign="a|b")]) == {}


def test_tenants_count_apart() -> None:
    found = tally([ev(EventType.RECEPTION, "a@x.test"), ev(EventType.RECEPTION, "b@x", tenant="b")])
    assert {k: s.accepted for k, s in found.items()} == {f"{T}|{C}": 1, f"b|{C}": 1}


def test_a_deferral_lasts_until_the_recipients_final_event() -> None:
    deferred = ev(EventType.TRANSIENT_FAILURE, "a@x.test", code=451, enhanced="4.7.1")
    start = [ev(EventType.RECEPTION, "a@x.test"), deferred, deferred]  # retried, deferred again
    assert one(start).deferred == 1
    assert one([*start, ev(EventType.TRANSIENT_FAILURE, "B@x.test")]).deferred == 2
    for final in (EventType.DELIVERY, EventType.BOUNCE, EventType.EXPIRATION, EventType.SUPPRESSED):
        stats = one([*start, ev(final, "A@X.test")])  # the address's case does not matter
        assert stats.deferred == 0, final
        assert stats.pending == {}, final  # accepted then final: nothing pending
    # another message to the same recipient does not end this one's deferral
    assert one([*start, ev(EventType.DELIVERY, "a@x.test", "q2")]).deferred == 1


def test_a_suppression_before_any_attempt_leaves_the_recipient_pending() -> None:
    # known limit (module docstring): without a deferral entry it cannot tell intake from
    # delivery, so it does not take the recipient off its destination
    stats = one([ev(EventType.RECEPTION, "a@x.test"), ev(EventType.SUPPRESSED, "a@x.test")])
    assert stats.pending == {"google": 1}


def test_pending_per_destination_uses_the_routing_keys_base() -> None:
    events = [
        ev(EventType.RECEPTION, f"{i}@g.test", f"q{i}", routing_key=f"google#{i}") for i in range(3)
    ]
    events += [ev(EventType.RECEPTION, "y@yahoo.test", "qy", routing_key="yahoo")]
    events += [ev(EventType.DELIVERY, "0@g.test", "q0", routing_key="google#0")]
    assert one(events).pending == {"google": 2, "yahoo": 1}


def test_pending_keeps_the_largest_destinations_and_sums_the_rest() -> None:
    values = {f"d{i}.test": {"a": i + 1, "f": 0} for i in range(5)}
    assert campaigns.largest(pending_of(values), 2) == {"d4.test": 5, "d3.test": 4, OTHER: 6}
    assert pending_of({"x.test": {"a": 1, "f": 3}, "": {"a": 1, "f": 0}}) == {}


def test_bounces_are_hard_or_soft_by_the_suppression_rules_classification() -> None:
    def kind(**kw: Any) -> str:
        return next(iter(effect(ev(EventType.BOUNCE, "a@x.test", **kw)).counts))

    assert kind(code=550, enhanced="5.1.1") == "bounced_hard"
    assert kind(code=550, enhanced="5.0.0", text="User unknown") == "bounced_hard"
    assert kind(code=550, enhanced="5.2.1") == "bounced_hard"
    assert kind(code=552, enhanced="5.2.2", text="mailbox full") == "bounced_soft"
    assert kind(code=554, enhanced="5.7.1", text="blocked") == "bounced_soft"
    assert kind(reason="bad-mailbox") == "bounced_hard"


def test_reception_counts_its_recipients_field() -> None:
    assert effect(ev(EventType.RECEPTION, "", recipients=7)) == Effect({"accepted": 7}, "google", 7)
    assert effect(ev(EventType.RECEPTION, "a@x.test")).accepted == 1
    assert effect(ev(EventType.RECEPTION, "")).accepted == 0  # an old SMTP reception


def test_a_replayed_event_is_not_counted_twice() -> None:
    eff = effect(ev(EventType.DELIVERY, "a@x.test"))
    value = campaigns.add_counts(None, eff, ts=5.0, offset=7, partition=1)
    assert campaigns.applied(value, 7) and campaigns.applied(value, 3)
    assert not campaigns.applied(value, 8) and not campaigns.applied(None, 0)
    again = campaigns.add_counts(value, eff, ts=4.0, offset=8, partition=1, pool="bulk")
    assert again == {"c": {"delivered": 2}, "o": 8, "p": 1, "f": 4.0, "l": 5.0, "pools": ["bulk"]}


def test_the_pools_the_campaigns_mail_goes_through() -> None:
    events = [
        ev(EventType.RECEPTION, "a@x.test", pool="bulk"),
        ev(EventType.DELIVERY, "a@x.test", pool="bulk"),
        ev(EventType.RECEPTION, "b@x.test", "q2", pool="default"),
        ev(EventType.COMPLAINT, "a@x.test", pool="other"),  # says nothing of the mail's pool
    ]
    assert one(events).pools == ("bulk", "default")


def test_the_record_round_trips_and_refuses_a_newer_version() -> None:
    stats = CampaignStats(tenant=T, campaign=C, accepted=3, pending={"google": 2})
    assert decode_stats(encode_stats(stats)) == stats
    assert parse_stats_key(stats_key(T, C)) == (T, C)
    with pytest.raises(ValueError):
        parse_stats_key(b"no-separator")
    with pytest.raises(NewerSchema):
        decode_stats(b'{"v": 2, "tenant": "a", "campaign": "b"}')
