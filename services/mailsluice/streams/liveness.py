"""Liveness of the stream processors: an agent that holds unprocessed events on its assigned
partitions and processes none for `stall_s` is stuck (a send that never succeeds, a client in
a fatal state), and only a restart helps (observability/progress.py decides).

Pure: the partitions' end offsets and the clock are passed in; the faust calls stay in app.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from mailsluice.observability.progress import LiveCheck, Progress

# (topic, partition)
Partition = tuple[str, int]
# The end offset (the next offset to be written) of each assigned partition of the agent's
# topic, None while the consumer has not fetched it yet.
Ends = Callable[[], Mapping[Partition, int | None]]


def unprocessed(ends: Mapping[Partition, int | None], done: Mapping[Partition, int]) -> int:
    """Events between what an agent has processed (`done`: the offset after its last event)
    and each partition's end. A partition with no event seen since its assignment counts
    none: where the agent starts in it is not known yet, and counting too little only delays
    a restart, where counting too much would restart an idle processor."""
    held = 0
    for partition, end in ends.items():
        start = done.get(partition)
        if end is not None and start is not None and end > start:
            held += end - start
    return held


class AgentProgress:
    """What one agent has processed, per partition, and its liveness (`progress.check`)."""

    def __init__(self, stall_s: float, ends: Ends, clock: Callable[[], float]) -> None:
        self.ends = ends
        self.done: dict[Partition, int] = {}
        self.progress = Progress(stall_s, self.held, clock)

    def started(self, partition: Partition, offset: int) -> None:
        """The agent took this event: it is held from now, whatever came before."""
        self.done.setdefault(partition, offset)

    def finished(self, partition: Partition, offset: int) -> None:
        """The agent finished this event (processed or skipped)."""
        self.done[partition] = offset + 1
        self.progress.made()

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions revoked: their events are no longer this agent's to process."""
        for partition in partitions:
            self.done.pop(partition, None)

    def held(self) -> int:
        return unprocessed(self.ends(), self.done)


def combined(checks: Mapping[str, LiveCheck]) -> tuple[bool, str]:
    """Alive when every agent is; the detail names the agents. Every check runs each time, so
    each keeps its own idle bookkeeping current."""
    answers = {name: check() for name, check in checks.items()}
    stalled = [f"{detail} ({name})" for name, (alive, detail) in answers.items() if not alive]
    if stalled:
        return False, "; ".join(stalled)
    return True, "; ".join(f"{name}: {detail}" for name, (_, detail) in answers.items())
