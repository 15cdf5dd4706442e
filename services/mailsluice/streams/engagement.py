"""Engagement counting: what one open, click or delivery adds to the unique opens and clicks,
as pure functions of the event and the per-(message, recipient) state the faust tables hold
(streams/engaged.py per tenant and provider, streams/tally.py per campaign).

Unique means once per message and recipient (queue id + recipient). Each count is kept twice:
raw (every open or click) and estimated-human (`machine == ""` and not part of an
"every link" burst). A click counts as an open too when the recipient's client showed no
pixel (images blocked): a click without an open is still a reader, and the click-to-open rate
stays at most 1.

Every link: a security scanner follows every link of a message at once. When the clicks of one
message hit `EVERY_LINK_LINKS` distinct links within `EVERY_LINK_S`, the clicks of that burst are
machine clicks: a human click already counted inside the burst (and the open it implied) is
taken back (-1), and the message counts once in `every_link`. Events are keyed by queue id, so
one message's clicks reach one partition, in order (ts is compared both ways all the same: the
tracker's replicas write concurrently).

The state value, compact since one exists per opened or clicked message and recipient:
`f` flag bits (FLAGS), `h` ts of the counted human click, `k` recent clicks [[link, ts]...]
(at most EVERY_LINK_LINKS), `t` latest ts, `o` the offset of the last event applied and `x`
the latest KEPT_DELTAS non-empty deltas by offset: an event replayed after a crash (the tables'
changelogs are separate topics, so the state may be ahead of the counts) adds the delta it
made again to the counts that had not reached it (they keep their own offsets).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailsluice.contracts.events import Event, EventType

Json = dict[str, Any]

EVERY_LINK_S = 2.0
EVERY_LINK_LINKS = 3
# the latest deltas a state keeps for replays (most messages have one or two that count)
KEPT_DELTAS = 4
# the counts an engagement event changes (CampaignStats and EngagementBucket fields)
ENGAGEMENT_COUNTS = ("opens", "opens_human", "clicks", "clicks_human", "every_link")

OPENED, OPENED_HUMAN, CLICKED, CLICKED_HUMAN, IMPLIED_OPEN, BURST = (1, 2, 4, 8, 16, 32)


def seen_key(event: Event) -> str:
    return f"{event.queue_id}|{event.recipient.strip().lower()}"


def tracked(event: Event) -> bool:
    return event.type in (EventType.OPEN, EventType.CLICK) and bool(event.queue_id)


def cohort_ts(event: Event) -> float:
    """The time an engagement event is counted at: when its message was delivered (so a
    window's opens are those of the mail it delivered), else when it happened."""
    return event.sent_at if event.sent_at > 0 else event.ts


def observe(state: Json | None, event: Event) -> tuple[Json, dict[str, int]]:
    """The new state of `event`'s message and recipient, and the deltas to the counts."""
    old = state or {}
    flags = int(old.get("f", 0))
    delta: dict[str, int] = {}
    human = event.machine == ""
    clicks = [list(k) for k in old.get("k") or []]
    human_click_ts = float(old.get("h", 0.0))
    if event.type is EventType.CLICK:
        clicks = _recent(clicks, event)
        if len({k[0] for k in clicks}) >= EVERY_LINK_LINKS:
            human = False
            flags = _burst(flags, delta, human_click_ts, event.ts)
        elif flags & BURST and len(clicks) > 1:
            human = False  # a late click of the same burst
        if not flags & CLICKED:
            flags |= CLICKED
            _add(delta, "clicks")
        if human and not flags & CLICKED_HUMAN:
            flags |= CLICKED_HUMAN
            human_click_ts = event.ts
            _add(delta, "clicks_human")
    flags = _open(flags, delta, human, implied=event.type is EventType.CLICK)
    new: Json = {"f": flags, "t": max(float(old.get("t", 0.0)), event.ts)}
    if clicks:
        new["k"] = clicks
    if flags & CLICKED_HUMAN:
        new["h"] = human_click_ts
    return new, delta


def _open(flags: int, delta: dict[str, int], human: bool, *, implied: bool) -> int:
    if not flags & OPENED:
        flags |= OPENED
        _add(delta, "opens")
    if human and not flags & OPENED_HUMAN:
        flags |= OPENED_HUMAN | (IMPLIED_OPEN if implied else 0)
        _add(delta, "opens_human")
    return flags


def _burst(flags: int, delta: dict[str, int], human_click_ts: float, ts: float) -> int:
    """Mark the message's every-link burst; take back the human click (and the open it
    implied) counted inside it."""
    if not flags & BURST:
        flags |= BURST
        _add(delta, "every_link")
    if flags & CLICKED_HUMAN and _near(human_click_ts, ts):
        flags &= ~CLICKED_HUMAN
        _add(delta, "clicks_human", -1)
        if flags & IMPLIED_OPEN:
            flags &= ~(IMPLIED_OPEN | OPENED_HUMAN)
            _add(delta, "opens_human", -1)
    return flags


def _recent(clicks: list[list[Any]], event: Event) -> list[list[Any]]:
    """The clicks within EVERY_LINK_S of this one, with it (one per link, the latest kept)."""
    near = [k for k in clicks if _near(float(k[1]), event.ts) and k[0] != event.link_index]
    near.append([event.link_index, event.ts])
    return near[-EVERY_LINK_LINKS:]


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= EVERY_LINK_S


def _add(delta: dict[str, int], name: str, n: int = 1) -> None:
    delta[name] = delta.get(name, 0) + n


def replayed(state: Json | None, offset: int) -> dict[str, int] | None:
    """The delta the event at `offset` made when the state already holds it, else None."""
    if state is None or int(state.get("o", -1)) < offset:
        return None
    for at, delta in state.get("x") or []:
        if at == offset:
            return dict(delta)
    return {}  # it changed nothing (or is older than the deltas kept)


def step(
    state: Json | None, event: Event, *, offset: int, partition: int
) -> tuple[Json, dict[str, int]]:
    """`observe` with the replay bookkeeping (`o`, `x`) and the sweeps' partition (`p`)."""
    again = replayed(state, offset)
    if again is not None and state is not None:
        return state, again
    new, delta = observe(state, event)
    kept = list((state or {}).get("x") or [])
    if delta:
        kept = [*kept, [offset, delta]][-KEPT_DELTAS:]
    return {**new, "o": offset, "x": kept, "p": partition}, delta


def add(counts: Mapping[str, int] | None, delta: Mapping[str, int]) -> dict[str, int]:
    out = dict(counts or {})
    for name, n in delta.items():
        out[name] = int(out.get(name, 0)) + n
    return out
