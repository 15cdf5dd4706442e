"""What one `make bench` run is: its plan (the workload), its time budget, and its report (the
figures printed as the final JSON line, and the errors of stages that failed)."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_smtp import Workload

REQUIRED_KEYS = (
    "ingest_msgs_per_s",
    "delivery_msgs_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "peak_rss_mb",
    "postfix_msgs_per_s",
    "ratio_vs_postfix",
)


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Report:
    """Every figure the bench prints; None where a stage failed or was skipped."""

    figures: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(REQUIRED_KEYS))
    errors: list[str] = field(default_factory=list)

    def fail(self, stage: str, why: object) -> None:
        message = f"{stage}: {why}"
        self.errors.append(message)
        say(f"FAILED {message}")

    def finish(self) -> dict[str, Any]:
        """Derive peak_rss_mb and the ratios, and return the JSON object."""
        figures = self.figures
        by_process = figures.get("peak_rss_mb_by_process") or {}
        ours = [v for k, v in by_process.items() if k != "kafka" and v is not None]
        if ours and len(ours) == len([k for k in by_process if k != "kafka"]):
            figures["peak_rss_mb"] = max(ours)
        figures["ratio_vs_postfix"] = ratio(
            figures.get("ours_e2e_msgs_per_s"), figures.get("postfix_msgs_per_s")
        )
        # CPU per message, ours over Postfix's (lower is better), broker apart and with it.
        postfix_cpu = figures.get("postfix_cpu_ms_per_msg")
        figures["cpu_ratio_vs_postfix"] = ratio(figures.get("ours_cpu_ms_per_msg"), postfix_cpu)
        figures["cpu_ratio_vs_postfix_with_broker"] = ratio(
            figures.get("ours_with_broker_cpu_ms_per_msg"), postfix_cpu
        )
        figures["errors"] = self.errors
        return figures

    @property
    def complete(self) -> bool:
        return not self.errors and all(self.figures.get(k) is not None for k in REQUIRED_KEYS)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs <= 0:
        return None
    return round(ours / theirs, 3)


@dataclass
class Plan:
    messages: int
    size: int
    sessions: int
    reuse: bool
    latency_rate: float
    latency_seconds: float
    concurrency: int
    rounds: int

    def workload(self) -> Workload:
        return Workload(self.messages, self.sessions, self.size, self.reuse)

    def warmup(self) -> Workload:
        return Workload(50, 5, self.size, self.reuse)


class Deadline:
    """The whole bench's time budget; a stage past it is skipped (and reported)."""

    def __init__(self, budget: float) -> None:
        self.end = time.monotonic() + budget

    @property
    def spent(self) -> bool:
        return time.monotonic() > self.end


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_stage(
    prefix: str, keep: bool, errors: list[str], body: Callable[[Path], None], label: str
) -> None:
    """`body(work)` in a fresh work dir under /tmp. SIGTERM from outside unwinds through the
    finally blocks, which stop every child by pid; an interrupt or an exception goes to `errors`
    (`label: why`). The dir is kept with `keep` or after an error, else removed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    say(f"work dir {work}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        body(work)
    except KeyboardInterrupt:
        errors.append("interrupted")
    except Exception as exc:
        errors.append(f"{label}: {exc}")
        say(f"FAILED {label}: {exc}")
    finally:
        if keep or errors:
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
