"""The shaping engine seen from outside: status rows for `mailsluice destinations`, and the
learned limits that go to the control topic and come back from it.

Controllers keep monotonic times; everything published carries wall times, converted here
with the engine's wall clock at the moment of publishing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mailsluice.contracts.control import DestinationRow
from mailsluice.contracts.control import Learned as LearnedRecord
from mailsluice.delivery.shaping.controller import Learned
from mailsluice.delivery.shaping.controller_types import Change
from mailsluice.delivery.shaping.engine import PolicyShaper

# Learned limits older than this are not restored: a provider's view of a sender moves on.
LEARNED_MAX_AGE_S = 7 * 86400.0
# Controller states in which a destination takes less than it could.
TROUBLED_STATES = frozenset({"hold", "blocked", "probe", "suspended"})


@dataclass
class StatusSoon:
    """Whether a status record should go out before its interval: when the worker starts on a
    destination it has not reported, or one enters or leaves a troubled state, so that
    `destinations list` shows it within seconds; at most once every `min_gap_s`, so a worker
    meeting a new domain every second does not rewrite its whole status every second."""

    min_gap_s: float = 2.0
    lanes_reported: int = 0
    pending: bool = False
    last: float = -math.inf

    def note(self, changes: Iterable[Change], lanes_created: int) -> None:
        troubled = any(
            (c.from_state in TROUBLED_STATES) != (c.to_state in TROUBLED_STATES) for c in changes
        )
        if troubled or lanes_created != self.lanes_reported:
            self.pending = True
        self.lanes_reported = lanes_created

    def due(self, now: float) -> bool:
        return self.pending and now - self.last >= self.min_gap_s

    def published(self, now: float) -> None:
        self.pending, self.last = False, now


def rows(shaper: PolicyShaper, now: float, queued: Callable[[str], int]) -> list[DestinationRow]:
    """One row per (destination, source address) the worker knows."""
    wall = shaper.wall()
    out = []
    for lane in shaper.lanes.all():
        key, source = lane.key, lane.source
        learned = lane.steering.learned()
        state, until, rule = learned.state, learned.until, shaper.rule_of.get((source, key), "")
        suspension = shaper.suspension(key, now)
        if suspension is not None:
            state, until, rule = "suspended", suspension.until, suspension.reason
        out.append(
            DestinationRow(
                key,
                state,
                queued(key),
                lane.limiter.active,
                lane.rate(now),
                lane.steering.connections(now),
                wall + until - now if until else 0.0,
                learned.last_reply,
                rule,
                source=source,
                ceiling=learned.ceiling if math.isfinite(learned.ceiling) else 0.0,
                per_connection=lane.steering.per_connection(),
                last_class=learned.last_class,
            )
        )
    return out


def learned_records(shaper: PolicyShaper, now: float) -> list[LearnedRecord]:
    """The learned limits of lanes that changed since the last call (to publish)."""
    wall = shaper.wall()
    out = []
    for lane in shaper.lanes.dirty():
        learned = lane.steering.learned()
        out.append(
            LearnedRecord(
                pool=shaper.pool,
                source=lane.source,
                key=lane.key,
                state=learned.state,
                rate=learned.rate,
                ceiling=learned.ceiling if math.isfinite(learned.ceiling) else 0.0,
                connections=learned.connections,
                learned_connections=learned.learned_connections,
                per_connection=learned.per_connection,
                until=wall + learned.until - now if learned.until else 0.0,
                block_interval=learned.block_interval,
                last_class=learned.last_class,
                last_reply=learned.last_reply,
                ts=wall,
            )
        )
    return out


def restore(shaper: PolicyShaper, record: LearnedRecord, now: float) -> bool:
    """A learned-limits record of this pool read from the control topic; False when it is
    another pool's or too old to trust."""
    wall = shaper.wall()
    if record.pool != shaper.pool or record.ts < wall - LEARNED_MAX_AGE_S:
        return False
    learned = Learned(
        rate=record.rate,
        ceiling=record.ceiling if record.ceiling > 0.0 else math.inf,
        connections=record.connections,
        learned_connections=record.learned_connections,
        per_connection=record.per_connection,
        state=record.state,
        until=now + record.until - wall if record.until else 0.0,
        last_class=record.last_class,
        last_reply=record.last_reply,
        block_interval=record.block_interval,
    )
    shaper.lanes.restore(record.source, record.key, learned, now, now + record.ts - wall)
    return True
