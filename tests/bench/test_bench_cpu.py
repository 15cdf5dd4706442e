"""CPU per message of `make bench` (scripts/bench_cpu.py): the /proc/<pid>/stat parser, process
trees, and a real tree of processes that burn known amounts of CPU."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.scripts import script

cpu = script("bench_cpu")

TICK_S = 1 / cpu.CLK_TCK


def stat_line(pid: int, comm: str, ppid: int, times: tuple[int, int, int, int]) -> str:
    """A /proc/<pid>/stat line as the kernel writes it (52 fields) with the given times."""
    utime, stime, cutime, cstime = times
    after_comm = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), str(cutime), str(cstime)]
    after_comm += ["20", "0", "1", "0", "12345"] + ["0"] * 30
    return f"{pid} ({comm}) {' '.join(after_comm)}\n"


# --------------------------------------------------------------------------- the parser


def test_parse_stat_reads_a_comm_with_spaces_and_parentheses() -> None:
    line = stat_line(4242, "a) b (c) ) S 9", 17, (11, 22, 33, 44))
    stat = cpu.parse_stat(line)
    assert stat.pid == 4242
    assert stat.comm == "a) b (c) ) S 9"
    assert (stat.state, stat.ppid) == ("S", 17)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (11, 22, 33, 44)
    assert stat.ticks == 110


def test_parse_stat_matches_the_kernels_own_line_for_this_process() -> None:
    stat = cpu.read_stat(os.getpid())
    assert stat is not None
    assert stat.ppid == os.getppid()
    assert stat.comm == Path("/proc/self/comm").read_text().strip()
    own = os.times()
    # The kernel's ticks against os.times() (the same accounting, in seconds), a tick apart.
    assert abs(stat.utime * TICK_S - own.user) <= 2 * TICK_S
    assert abs(stat.cutime * TICK_S - own.children_user) <= 2 * TICK_S


def test_read_stat_of_a_missing_process_is_none(tmp_path: Path) -> None:
    assert cpu.read_stat(99999, tmp_path) is None


# --------------------------------------------------------------------------- trees, fake /proc


def fake_proc(root: Path, rows: dict[int, tuple[int, tuple[int, int, int, int]]]) -> Path:
    """A /proc-shaped directory: pid -> (ppid, times)."""
    for pid, (ppid, times) in rows.items():
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "stat").write_text(stat_line(pid, f"p {pid}", ppid, times))
    (root / "self").mkdir(exist_ok=True)  # not a pid: ignored
    return root


def test_a_tree_sums_every_descendant_and_nothing_else(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            1: (0, (1000, 0, 0, 0)),
            10: (1, (100, 50, 30, 20)),  # the root: 200 ticks, reaped children included
            11: (10, (10, 0, 0, 0)),
            12: (11, (0, 5, 0, 0)),  # a grandchild
            20: (1, (7, 7, 0, 0)),  # a sibling of the root, not in its tree
        },
    )
    stats = cpu.all_stats(proc)
    assert set(stats) == {1, 10, 11, 12, 20}
    assert cpu.tree_pids([10], stats) == {10, 11, 12}
    assert cpu.tree_ticks([10], stats) == 215
    assert cpu.tree_ticks([10, 20], stats) == 229
    assert cpu.tree_pids([777], stats) == set()
    seconds = cpu.sample({"root": [10], "both": [10, 20], "gone": [10, 777]}, proc)
    assert seconds == {"root": 215 * TICK_S, "both": 229 * TICK_S, "gone": None}


def test_a_meter_gives_ms_per_message_of_each_group(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: (1, (100, 0, 0, 0)), 20: (1, (0, 0, 0, 0))})
    meter = cpu.Meter({"ours": [10], "broker": [20]}, proc).start()
    # 3 s more for ours (a child reaped meanwhile: in cutime), 0.6 s for the broker.
    extra = 3 * cpu.CLK_TCK
    fake_proc(tmp_path, {10: (1, (100, 0, extra, 0)), 20: (1, (int(0.6 * cpu.CLK_TCK), 0, 0, 0))})
    per_msg = meter.stop(2000)
    assert per_msg == {"ours": 1.5, "broker": 0.3}
    assert meter.spent == pytest.approx({"ours": 3.0, "broker": 0.6})


# --------------------------------------------------------------------------- the arithmetic


def test_ms_per_message_is_cpu_seconds_per_thousand_messages() -> None:
    assert cpu.ms_per_msg(1.5, 3000) == 0.5  # 1.5 s over 3,000: 0.5 s per 1,000
    assert cpu.ms_per_msg(2.0, 1000) == 2.0
    assert cpu.ms_per_msg(1.0, 3) == 333.333
    assert cpu.ms_per_msg(None, 1000) is None
    assert cpu.ms_per_msg(1.0, 0) is None


def test_delta_total_and_median_keep_missing_figures_missing() -> None:
    spent = cpu.delta({"a": 1.0, "b": None, "c": 5.0}, {"a": 3.5, "b": 2.0, "c": 4.0, "d": 1.0})
    assert spent == {"a": 2.5, "b": None, "c": 0.0, "d": None}  # c: a restarted root, not < 0
    assert cpu.total(1.25, 0.5) == 1.75
    assert cpu.total(1.25, None) is None  # a partial sum would read as a saving
    assert cpu.median([3.0, None, 1.0, 2.0]) == 2.0
    assert cpu.median([1.0, 2.0]) == 1.5
    assert cpu.median([None]) is None
    assert cpu.describe(1.914, "postfix tree") == "CPU 1.91 ms/msg (postfix tree)"
    assert cpu.describe(None, "broker") == "CPU n/a ms/msg (broker)"


# --------------------------------------------------------------------------- a real tree

BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
# The grandchild burns, says so, and lives until its stdin closes.
GRANDCHILD = BURN.format(s=0.3) + "print('burned', flush=True)\nimport sys\nsys.stdin.read()\n"
# The child starts the grandchild, burns as much itself, then obeys the test on stdin.
CHILD = f"""
import subprocess, sys, time
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end:
        pass
g = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
assert g.stdout.readline().strip() == "burned"
burn(0.3)
print("ready", g.pid, flush=True)
for line in sys.stdin:
    if line.strip() == "burn":
        burn(0.3)
        print("burned", flush=True)
    elif line.strip() == "reap":
        g.stdin.close()
        g.wait()
        print("reaped", flush=True)
"""


def expect(proc: subprocess.Popen[str], word: str, within: float = 60.0) -> list[str]:
    """The child's next line, which must start with `word`; fails after `within` seconds
    (the child could hang) instead of blocking the test."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + within
        while not selector.select(timeout=0.5):
            assert proc.poll() is None, f"the child exited {proc.returncode}"
            assert time.monotonic() < deadline, f"no {word!r} from the child in {within}s"
    line = proc.stdout.readline().split()
    assert line and line[0] == word, f"expected {word!r}, got {line}"
    return line


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()  # the child ends its loop, then its grandchild's stdin closes with it
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    finally:
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_real_tree_counts_child_and_grandchild_then_the_reaped_grandchild(
    child: subprocess.Popen[str],
) -> None:
    grandchild = int(expect(child, "ready")[1])
    stats = cpu.all_stats()
    assert cpu.tree_pids([child.pid], stats) == {child.pid, grandchild}
    # 0.3 s burned by each, plus two interpreters' start-up (well under 0.6 s of CPU).
    first = cpu.sample({"tree": [child.pid]})["tree"]
    assert 0.6 - 2 * TICK_S <= first < 1.2, first

    assert child.stdin is not None
    child.stdin.write("burn\n")
    child.stdin.flush()
    expect(child, "burned")
    grown = cpu.sample({"tree": [child.pid]})["tree"]
    assert 0.3 - 2 * TICK_S <= grown - first < 0.45, (first, grown)

    child.stdin.write("reap\n")
    child.stdin.flush()
    expect(child, "reaped")
    after = cpu.all_stats()
    assert grandchild not in cpu.tree_pids([child.pid], after)
    parent = after[child.pid]
    # The grandchild's 0.3 s moved into its parent's cutime/cstime: the tree lost nothing.
    assert (parent.cutime + parent.cstime) * TICK_S >= 0.3 - TICK_S
    assert cpu.tree_ticks([child.pid], after) * TICK_S >= grown - TICK_S
