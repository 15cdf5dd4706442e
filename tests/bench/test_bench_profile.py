"""`make bench --profile` (scripts/bench_profile.py): a real py-spy recording of a busy Python
process, and the reading of collapsed stacks into own and inclusive shares."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

from support.scripts import script

profile = script("bench_profile")

BUSY = """
import sys, time
def inner():
    return sum(i * i for i in range(2000))
def outer():
    end = time.process_time() + 0.5
    while time.process_time() < end:
        inner()
print("ready", flush=True)
sys.stdin.readline()
outer()
"""


def test_own_and_inclusive_shares_of_collapsed_stacks(tmp_path: Path) -> None:
    stacks = tmp_path / "p.txt"
    stacks.write_text(
        "main (a.py:1);outer (a.py:5);inner (a.py:9) 6\n"
        "main (a.py:1);outer (a.py:6) 3\n"
        "main (a.py:2);other (b.py:3) 1\n"
    )
    total, rows = profile.top_functions(stacks, count=3)
    assert total == 10
    assert rows[0] == ("inner (a.py)", 60.0, 60.0)
    assert rows[1] == ("outer (a.py)", 30.0, 90.0)  # lines of one function counted together
    assert rows[2] == ("other (b.py)", 10.0, 10.0)


def test_a_recording_of_a_busy_process_names_its_hot_function(tmp_path: Path) -> None:
    """The process burns 0.5 s of CPU once py-spy samples it, then exits (and so does py-spy)."""
    with subprocess.Popen(
        [sys.executable, "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as busy:
        assert busy.stdin is not None and busy.stdout is not None
        try:
            assert busy.stdout.readline() == b"ready\n"
            profiler = profile.Profiler(tmp_path, {"busy": busy.pid}).start()
            log = tmp_path / "busy.log"
            recorder = profiler.procs["busy"]
            while "Sampling process" not in log.read_text():
                assert recorder.poll() is None, log.read_text()
                recorder_wait(recorder)
            busy.stdin.write(b"go\n")
            busy.stdin.flush()
            assert busy.wait(60) == 0
            problems = profiler.stop()
        finally:
            busy.kill()
    assert problems == []
    total, rows = profile.top_functions(tmp_path / "busy.txt", count=5)
    assert total > 10
    assert any("inner" in name or "<genexpr>" in name for name, _, _ in rows), rows


def recorder_wait(recorder: subprocess.Popen[bytes]) -> None:
    """A short wait on the recorder itself (it stays alive): how often its log is read."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        recorder.wait(0.02)
