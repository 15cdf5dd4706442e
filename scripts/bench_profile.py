"""`make bench` with `--profile DIR`: py-spy samples ingest and delivery through the first
end-to-end round, writes each one's collapsed stacks (DIR/<name>.txt, the flamegraph input) and
prints the functions that took the most samples, by their own time and with their callees.

py-spy (a dev dependency) reads the processes' memory from outside: the services run unchanged,
and `--nonblocking` keeps the sampling from pausing them. It needs ptrace rights over them (root,
or kernel.yama.ptrace_scope 0 for one's own processes).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench_run import say

ROOT = Path(__file__).resolve().parents[1]
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
RATE_HZ = 250
_LINE = re.compile(r":\d+\)$")


class Profiler:
    """py-spy recording each named process until `stop`."""

    def __init__(self, out_dir: Path, pids: dict[str, int]) -> None:
        self.out_dir = out_dir
        self.pids = pids
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> Profiler:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            argv = [str(PY_SPY), "record", "--nonblocking", "-r", str(RATE_HZ), "-p", str(pid)]
            argv += ["-f", "raw", "-o", str(self.out_dir / f"{name}.txt")]
            with open(self.out_dir / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def stop(self, timeout: float = 30.0) -> list[str]:
        """SIGINT each recorder (py-spy writes its file then), by pid; the problems seen."""
        problems = []
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not (self.out_dir / f"{name}.txt").exists():
                problems.append(f"py-spy wrote no profile of {name} (see {name}.log)")
        return problems


def top_functions(path: Path, count: int = 12) -> tuple[int, list[tuple[str, float, float]]]:
    """(samples, [(function, % own, % with callees)]) of collapsed stacks, by own time."""
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        samples = int(n)
        total += samples
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            within[frame] += samples
    rows = [
        (name, 100 * samples / total, 100 * within[name] / total)
        for name, samples in own.most_common(count)
    ]
    return total, rows


def report(out_dir: Path, names: list[str]) -> None:
    """Print each profile's top functions."""
    for name in names:
        path = out_dir / f"{name}.txt"
        if not path.exists():
            continue
        total, rows = top_functions(path)
        say(f"profile of {name}: {total} samples, top functions (own %, with callees %)")
        for function, own_pct, within_pct in rows:
            say(f"  {own_pct:5.1f} {within_pct:5.1f}  {function[:110]}")
        say(f"  stacks in {path} (flamegraph.pl or speedscope read them)")
