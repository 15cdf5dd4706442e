"""CPU per message for `make bench`, from the kernel's own accounting (/proc/<pid>/stat).

A process tree's CPU time is the sum, over every live process in it, of utime + stime + cutime
+ cstime (clock ticks, SC_CLK_TCK a second). A child that exited and was reaped has its time in
its parent's cutime/cstime; a live child's time is not there yet, so nothing counts twice. The
tree is found from the ppid of every /proc/*/stat, read in one pass per sample.

A stage samples its groups (named lists of root pids: ours, broker, postfix) before and after,
and divides the difference by the messages it moved. CPU seconds per 1,000 messages and CPU
milliseconds per message are the same number; the figures use ms per message.

What it cannot see: a child reaped between the read of its own stat and of its parent's (in
the same pass) counts twice or not at all; a parent that ignores SIGCHLD loses its children's
time. Neither happens to the long-lived daemons measured here by more than one short process.

Standard library only; importable from tests (the parser and the arithmetic are pure).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")
Groups = Mapping[str, Sequence[int]]  # group name -> root pids of its trees


@dataclass(frozen=True)
class ProcStat:
    """The fields of one /proc/<pid>/stat line that CPU accounting needs (times in ticks)."""

    pid: int
    comm: str
    state: str
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def ticks(self) -> int:
        """Its own CPU time and that of its reaped children."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """One /proc/<pid>/stat line. The comm field (2) is in parentheses and may itself hold
    spaces and parentheses: it runs from the first '(' to the last ')', as only numbers and
    the one-letter state follow it."""
    open_at, close_at = text.index("("), text.rindex(")")
    fields = text[close_at + 1 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    return ProcStat(
        pid=int(text[:open_at]),
        comm=text[open_at + 1 : close_at],
        state=fields[0],
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """The stat of one process, None when it is gone."""
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def all_stats(proc: Path = PROC) -> dict[int, ProcStat]:
    """Every process's stat, in one pass over /proc (a process that exits meanwhile is left
    out). Zombies stay in: their time is not yet in their parent's cutime."""
    found: dict[int, ProcStat] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit() and (stat := read_stat(int(entry.name), proc)) is not None:
            found[stat.pid] = stat
    return found


def tree_pids(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> set[int]:
    """The live roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in stats]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_ticks(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> int:
    return sum(stats[pid].ticks for pid in tree_pids(roots, stats))


def sample(groups: Groups, proc: Path = PROC) -> dict[str, float | None]:
    """CPU seconds of each group's trees, from one pass over /proc; None for a group one of
    whose roots is gone (its time would drop out of the sum)."""
    stats = all_stats(proc)
    seconds: dict[str, float | None] = {}
    for name, roots in groups.items():
        alive = bool(roots) and all(pid in stats for pid in roots)
        seconds[name] = tree_ticks(roots, stats) / CLK_TCK if alive else None
    return seconds


def delta(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float | None]:
    """CPU seconds spent by each group between two samples (None where either is missing)."""
    spent: dict[str, float | None] = {}
    for name, end in after.items():
        start = before.get(name)
        spent[name] = None if start is None or end is None else max(0.0, end - start)
    return spent


def ms_per_msg(cpu_s: float | None, messages: int) -> float | None:
    """CPU milliseconds per message (= CPU seconds per 1,000 messages), rounded."""
    if cpu_s is None or messages <= 0:
        return None
    return round(cpu_s * 1000 / messages, 3)


def per_msg(spent: Mapping[str, float | None], messages: int) -> dict[str, float | None]:
    """ms per message of every group of a delta."""
    return {name: ms_per_msg(cpu_s, messages) for name, cpu_s in spent.items()}


def total(*values: float | None) -> float | None:
    """The sum, None if any part is missing (a partial sum would read as a saving)."""
    if any(v is None for v in values):
        return None
    return round(sum(v for v in values if v is not None), 3)


def median(values: Sequence[float | None]) -> float | None:
    """The median of the rounds that have a figure (None when none has)."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


class Meter:
    """Samples a set of groups around one stage: `start()`, then `stop(messages)` gives ms
    per message of every group."""

    def __init__(self, groups: Groups, proc: Path = PROC) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.proc = proc
        self._before: dict[str, float | None] = {}
        self.spent: dict[str, float | None] = {}

    def start(self) -> Meter:
        self._before = sample(self.groups, self.proc)
        return self

    def stop(self, messages: int) -> dict[str, float | None]:
        self.spent = delta(self._before, sample(self.groups, self.proc))
        return per_msg(self.spent, messages)


def describe(ms: float | None, what: str) -> str:
    """'CPU 1.9 ms/msg (postfix tree)' for a progress line."""
    return f"CPU {'n/a' if ms is None else f'{ms:.2f}'} ms/msg ({what})"
