"""Set-up steps shown one line each, with their elapsed time (stdlib only: the Makefile runs it
before the venv exists).

    python3 scripts/steps.py "LABEL" -- COMMAND [ARG...]

prints "==> LABEL", runs COMMAND (its output passes through), then "    LABEL: done in 12.3s"
(or "failed (status N) after 12.3s") and exits with COMMAND's status. scripts/run_local.py uses
step() for its own steps.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def step(label: str) -> Iterator[None]:
    """Announce a step, time it, and say how it ended (an exception is a failure)."""
    print(f"==> {label}", flush=True)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"    {label}: failed after {time.monotonic() - start:.1f}s", flush=True)
        raise
    print(f"    {label}: done in {time.monotonic() - start:.1f}s", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: steps.py LABEL -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    label, command = argv[0], argv[2:]
    print(f"==> {label}", flush=True)
    start = time.monotonic()
    status = subprocess.run(command, check=False).returncode
    elapsed = time.monotonic() - start
    outcome = "done" if status == 0 else f"failed (status {status})"
    print(f"    {label}: {outcome} in {elapsed:.1f}s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
