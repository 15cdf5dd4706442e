"""The records closed-loop shaping adds: learned limits on the control topic and the
destination_state event."""

from __future__ import annotations

import json
import math

import pytest

from mailsluice.contracts.control import (
    ControlState,
    Learned,
    decode_learned,
    encode_learned,
    learned_key,
)
from mailsluice.contracts.events import Event, EventType, decode_event, encode_event


def _learned(**changes: object) -> Learned:
    base = Learned(
        pool="bulk",
        source="192.0.2.10",
        key="google",
        state="steady",
        rate=12.5,
        ceiling=13.2,
        connections=4,
        learned_connections=5,
        per_connection=40,
        until=0.0,
        block_interval=60.0,
        last_class="rate",
        last_reply="421 4.7.0 Try again later, closing connection.",
        ts=1000.0,
    )
    return Learned(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_learned_round_trips_and_an_unlimited_rate_stays_valid_json() -> None:
    learned = _learned()
    assert decode_learned(encode_learned(learned)) == learned
    unlimited = _learned(rate=math.inf)
    raw = encode_learned(unlimited)
    assert json.loads(raw)["rate"] is None
    assert decode_learned(raw).rate == math.inf


def test_a_newer_learned_record_is_refused() -> None:
    data = json.loads(encode_learned(_learned()))
    data["v"] = 99
    with pytest.raises(ValueError, match="newer"):
        decode_learned(json.dumps(data).encode())


def test_control_state_keeps_learned_records_per_source_and_drops_tombstones() -> None:
    state = ControlState()
    a, b = _learned(), _learned(source="192.0.2.11", rate=3.0)
    state.apply(learned_key("bulk", a.source, a.key), encode_learned(a))
    state.apply(learned_key("bulk", b.source, b.key), encode_learned(b))
    assert state.learned == {
        ("bulk", "192.0.2.10", "google"): a,
        ("bulk", "192.0.2.11", "google"): b,
    }
    state.apply(learned_key("bulk", a.source, a.key), None)
    assert list(state.learned) == [("bulk", "192.0.2.11", "google")]
    # a key without a routing key part, or a record this version cannot read, is skipped
    assert state.apply(b"learned/bulk/192.0.2.10", encode_learned(a)) is None
    assert state.apply(b"learned/bulk/192.0.2.10/yahoo", b"{not json") is None
    assert ("bulk", "192.0.2.10", "yahoo") not in state.learned


def test_destination_state_event_round_trips() -> None:
    event = Event(
        type=EventType.DESTINATION_STATE,
        ts=5.0,
        pool="bulk",
        routing_key="yahoo",
        source="192.0.2.10",
        state_from="steady",
        state_to="hold",
        reply_class="reputation",
        code=421,
        enhanced="4.7.0",
        text="[TSS04] Messages from 192.0.2.10 temporarily deferred",
        rate=2.5,
        connections=3,
    )
    assert decode_event(encode_event(event)) == event
