"""Liveness: a component that has work and makes no progress for too long is stuck, and only a
restart helps (a failing readiness probe never restarts a pod; a failing liveness probe does).

The component says when it made progress (a record finished, a batch written) and how much
work it holds; `check` turns that into the liveness answer. Pure, with the clock passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

LiveCheck = Callable[[], tuple[bool, str]]


@dataclass
class Progress:
    """`stall_s`: the longest a component may hold work without progress (longer than any
    single legitimate wait, e.g. the slowest SMTP timeout)."""

    stall_s: float
    work: Callable[[], int]
    clock: Callable[[], float]
    last: float = field(default=-math.inf)
    idle_since: float = field(default=-math.inf)

    def made(self) -> None:
        """Some work was done just now."""
        self.last = self.clock()

    def check(self) -> tuple[bool, str]:
        """(alive, detail) for /healthz."""
        now = self.clock()
        held = self.work()
        if held <= 0:
            self.idle_since = now
            return True, "no work held"
        # Work that arrived after the last progress is judged from its arrival.
        since = max(self.last, self.idle_since)
        if since == -math.inf:
            self.idle_since = since = now
        waited = now - since
        if waited > self.stall_s:
            return False, f"stalled: {held} held, no progress for {waited:.0f} s"
        return True, f"{held} held, last progress {waited:.0f} s ago"
