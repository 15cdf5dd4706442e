"""When a controller stops sending to a destination, and for how long.

A block reply stops all sending for an interval that doubles with every probe the provider
refuses (up to a cap) and starts over once blocks are an hour apart. A streak of transient
server failures with nothing accepted between them stops it too, for a shorter interval that
doubles the same way; a good probe then returns to where the streak began. Plain data with
the time passed in, like the controller that owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mailsluice.delivery.shaping.controller_tuning import Tuning


@dataclass
class Stops:
    tuning: Tuning
    block_interval: float
    server_interval: float
    by: str = ""  # "block" or "server": what the current stop and its probe are for
    resume: str = "slow_start"  # where a server stop returns after a good probe
    last_block: float = -math.inf
    server_run: int = 0  # server failures in a row, nothing accepted between

    @classmethod
    def fresh(cls, tuning: Tuning) -> Stops:
        return cls(tuning, tuning.block_initial, tuning.server_initial)

    def on_block(self, state: str, at: float, min_block: float) -> float | None:
        """Seconds a block reply stops sending for; None when it changes nothing (a send in
        flight when the block came)."""
        t = self.tuning
        if state == "blocked" and self.by == "block":
            return None
        if state == "probe" and self.by == "block":
            self.block_interval = min(t.block_cap, self.block_interval * t.block_factor)
        elif at - self.last_block > t.block_forget:
            self.block_interval = t.block_initial
        self.last_block, self.by = at, "block"
        return max(self.block_interval, min_block)

    def on_server(self, state: str, probing: bool) -> float | None:
        """Seconds a server failure stops sending for; None while the streak is short. A probe
        that fails this way stops for longer: after a block as a refused probe, after server
        trouble as more of it."""
        t = self.tuning
        self.server_run += 1
        if state == "blocked":
            return None
        if state == "probe" and probing:
            if self.by == "server":
                self.server_interval = min(t.server_cap, self.server_interval * 2)
                return self.server_interval
            self.block_interval = min(t.block_cap, self.block_interval * t.block_factor)
            self.by = "block"
            return self.block_interval
        if self.server_run < t.server_streak:
            return None
        self.server_interval = t.server_initial
        self.resume = "slow_start" if state == "slow_start" else "steady"
        self.by = "server"
        return self.server_interval
