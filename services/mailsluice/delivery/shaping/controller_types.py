"""The records the shaping controller takes and gives: policy ceilings, classified replies,
state changes, and what it learned.

They live apart from the controller so the controller module holds only its decisions;
`controller` re-exports them, and callers import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsluice.policy.replies import ReplyClass


@dataclass(frozen=True)
class Ceilings:
    """From the resolved policy rule (already divided among shards)."""

    rate: float  # messages per second; math.inf allowed
    connections: int
    per_connection: int  # messages per connection
    start_rate: float | None = None  # hint; None: the tuning's default
    start_connections: int | None = None


@dataclass(frozen=True)
class Signal:
    """One classified reply of a send from this source to this destination."""

    cls: ReplyClass
    at: float
    phase: str = ""
    reply: str = ""  # "421 4.7.0 text", for events and status
    # Connections open from this source to the destination when the reply came, counting the
    # one that carried it (a refused connection included).
    open_connections: int = 0
    sent_on_connection: int = 0  # messages the connection carried before this one
    min_block: float = 0.0  # a block rule's own minimum duration (seconds), if it names one


@dataclass(frozen=True)
class Change:
    """A state change (or a newly learned limit), for a log line and a destination_state
    event."""

    source: str
    key: str
    from_state: str
    to_state: str
    cls: str
    reply: str
    rate: float
    connections: int
    at: float


@dataclass(frozen=True)
class Learned:
    """What survives a restart or a handover. `until` is on the controller's clock; the
    caller converts it to wall time when it persists it."""

    rate: float
    ceiling: float  # inf: none found yet
    connections: int
    learned_connections: int  # 0: none learned
    per_connection: int  # 0: none learned
    state: str
    until: float
    last_class: str
    last_reply: str
    block_interval: float
