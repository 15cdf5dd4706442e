"""Pipelined outcomes: a destination's send slot goes to its next message while the last one's
outcome records are still being acknowledged, up to a fixed depth per slot.

A record is finished (its offset committable) only once its outcome records are acknowledged,
and the next owner of a partition skips the recipients whose delivery events it reads back;
so what a crash can repeat is the sends whose events were not yet acknowledged. With a depth
of D and S slots towards a destination (from one source address), at most S sends are under
way and at most (D - 1) x S more wait for their acknowledgements: at most D messages per slot.
D = 1 holds the slot until the acknowledgements, as a Postfix delivery agent reports before it
takes the next message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class OutcomePipeline:
    """How many sends towards each (destination, source) await their acknowledgements with
    their slot already given back."""

    def __init__(self, depth: int, slots: Callable[[str, str], int]) -> None:
        """`slots(key, source)`: the destination's current concurrent sends from `source`."""
        self.depth = depth
        self.slots = slots
        self._waiting: Counter[tuple[str, str]] = Counter()

    def enter(self, key: str, source: str) -> bool:
        """True: the slot may be given back now, and the send counts as waiting until
        `leave`; False: the bound is reached, the slot waits for the acknowledgements."""
        if self.depth <= 1:
            return False
        lane = (key, source)
        if self._waiting[lane] >= (self.depth - 1) * max(1, self.slots(key, source)):
            return False
        self._waiting[lane] += 1
        return True

    def leave(self, key: str, source: str) -> None:
        lane = (key, source)
        self._waiting[lane] -= 1
        if self._waiting[lane] <= 0:
            del self._waiting[lane]

    def waiting(self) -> int:
        """Sends waiting for their acknowledgements with their slot given back."""
        return sum(self._waiting.values())
