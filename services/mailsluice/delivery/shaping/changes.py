"""A destination's state change, told: one log line and one destination_state event each.

Operators read these to answer "why did mail to Yahoo slow down at 14:02?": the state before
and after, the class of the reply that moved it, the reply itself and the limits now.
"""

from __future__ import annotations

import logging

from mailsluice.contracts.events import Event, EventType
from mailsluice.delivery.shaping.controller import Change

log = logging.getLogger("mailsluice.delivery.shaping")


def change_event(pool: str, change: Change, at: float) -> Event:
    """The destination_state event of a change; `at` is its wall time. The reply reads
    "<code> <enhanced> <text>" (signals.py writes it so)."""
    code, enhanced, text = [*change.reply.split(" ", 2), "", ""][:3]
    if not code.isdigit():
        code, enhanced, text = "", "", change.reply
    return Event(
        type=EventType.DESTINATION_STATE,
        ts=at,
        pool=pool,
        routing_key=change.key,
        source=change.source,
        state_from=change.from_state,
        state_to=change.to_state,
        reply_class=change.cls,
        code=int(code) if code else 0,
        enhanced=enhanced,
        text=text[:1000],
        rate=change.rate,
        connections=change.connections,
    )


def log_change(pool: str, change: Change, rule: str, at: float) -> None:
    log.info(
        "destination %s from %s: %s -> %s on %s reply (%s); now %.4g/min, %d connections: %s",
        change.key,
        change.source or "any address",
        change.from_state,
        change.to_state,
        change.cls or "no",
        rule or "-",
        change.rate * 60,
        change.connections,
        change.reply or "-",
        extra={"pool": pool, "destination": change.key, "at": at},
    )
