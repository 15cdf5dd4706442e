"""What a lane needs of its controller: the Steering protocol, met by controller.Controller
(learning a destination's limits from its replies) and by Fixed (limits as configured)."""

from __future__ import annotations

import math
from typing import Protocol

from mailsluice.delivery.shaping.controller import Ceilings, Change, Learned, Signal


class Steering(Protocol):
    """What a lane needs of its controller (controller.Controller, or Fixed)."""

    state: str

    def rate(self, now: float) -> float: ...
    def projected(self, now: float, at: float) -> float: ...
    def connections(self, now: float) -> int: ...
    def per_connection(self) -> int: ...
    def wait(self, now: float) -> float: ...
    def started(self, now: float) -> None: ...
    def observe(self, s: Signal) -> Change | None: ...
    def tick(self, now: float) -> Change | None: ...
    def next_change(self, now: float) -> float | None: ...
    def learned(self) -> Learned: ...
    def set_ceilings(self, c: Ceilings) -> None: ...


class Fixed:
    """A lane held to its ceilings as configured, learning nothing: destinations whose policy
    says `adaptive = false` (a relay of one's own), and workers run without a shaping policy."""

    state = "fixed"

    def __init__(self, source: str, key: str, ceilings: Ceilings) -> None:
        self.source, self.key, self.ceilings = source, key, ceilings

    def rate(self, now: float) -> float:
        return self.ceilings.rate

    def projected(self, now: float, at: float) -> float:
        return self.ceilings.rate

    def connections(self, now: float) -> int:
        return self.ceilings.connections

    def per_connection(self) -> int:
        return self.ceilings.per_connection

    def wait(self, now: float) -> float:
        return 0.0

    def started(self, now: float) -> None:
        return None

    def observe(self, s: Signal) -> Change | None:
        return None

    def tick(self, now: float) -> Change | None:
        return None

    def next_change(self, now: float) -> float | None:
        return None

    def learned(self) -> Learned:
        c = self.ceilings
        return Learned(
            rate=c.rate,
            ceiling=math.inf,
            connections=c.connections,
            learned_connections=0,
            per_connection=0,
            state=self.state,
            until=0.0,
            last_class="",
            last_reply="",
            block_interval=0.0,
        )

    def set_ceilings(self, c: Ceilings) -> None:
        self.ceilings = c
