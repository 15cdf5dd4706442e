"""End to end for `make bench`: the same workload through each target (the Postfix peer, our
pipeline) into smtp-sink, rounds interleaved so both see the same background load, with the CPU
each side spent per message.

Throughput: the best round counts (other work on the machine only ever slows a run down).
CPU per message: the median of the rounds (CPU time moves far less with other load than wall
time does, and the median keeps one odd round from deciding).

CPU groups per target (bench_cpu): postfix = the master's whole tree; ours = ingest and
delivery; broker = the Kafka JVM, reported apart and as ours_with_broker. smtp-source and
smtp-sink are the shared workload and count for neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bench_cpu
import bench_profile
from bench_profile import Profiler
from bench_run import Deadline, Plan, Report, say
from bench_smtp import PeerResult, SmtpSink, measure_relay_e2e


@dataclass
class Contender:
    """One end-to-end target: its SMTP host:port and the CPU groups that count for it."""

    name: str  # "postfix" or "ours"
    target: str
    groups: dict[str, list[int]]
    results: list[PeerResult] = field(default_factory=list)
    cpu: list[dict[str, float | None]] = field(default_factory=list)  # ms/msg per group, a round
    profiled: dict[str, int] = field(default_factory=dict)  # name -> pid, for --profile

    @property
    def key(self) -> str:
        """The prefix of its throughput figures (bench.py's names, kept)."""
        return "postfix" if self.name == "postfix" else "ours_e2e"


def best_round(results: list[PeerResult]) -> PeerResult:
    """The fastest run (other work on the machine only ever slows a run down); raises if any
    run failed."""
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(failed[0])
    return max(results, key=lambda r: r.e2e_msgs_per_s or 0.0)


def cpu_text(cpu: Mapping[str, float | None]) -> str:
    """The CPU beside a throughput line: each group, and ours with the broker."""
    parts = [bench_cpu.describe(cpu.get("postfix"), "postfix tree")] if "postfix" in cpu else []
    if "ours" in cpu:
        parts.append(bench_cpu.describe(cpu.get("ours"), "ingest + delivery"))
        with_broker = bench_cpu.total(cpu.get("ours"), cpu.get("broker"))
        parts.append(bench_cpu.describe(with_broker, "with the broker"))
    return ", ".join(parts)


def run_round(
    plan: Plan, sink: SmtpSink, side: Contender, number: int, profile: Path | None = None
) -> int:
    """One round of one target; returns the messages injected. With `profile`, the first
    round of a side with processes to profile is sampled by py-spy (bench_profile)."""
    say(
        f"end to end, {side.name}: round {number}/{plan.rounds}, {plan.messages} messages of "
        f"{plan.size} bytes over {plan.sessions} sessions -> sink"
    )
    sampled = profile is not None and number == 1 and side.profiled
    profiler = Profiler(profile, side.profiled).start() if profile and sampled else None
    meter = bench_cpu.Meter(side.groups).start()
    result = measure_relay_e2e(sink, side.target, plan.workload(), 120)
    cpu = meter.stop(result.delivered)
    if profiler is not None:
        for problem in profiler.stop():
            say(f"profile: {problem}")
        bench_profile.report(profiler.out_dir, list(side.profiled))
    side.results.append(result)
    if not result.error:
        side.cpu.append(cpu)
        say(
            f"end to end, {side.name}: {result.e2e_msgs_per_s} msg/s ({result.seconds} s), "
            f"injected at {result.inject_msgs_per_s} msg/s, {cpu_text(cpu)}"
        )
    return result.injected


def compare_end_to_end(
    plan: Plan,
    sink: SmtpSink,
    sides: list[Contender],
    report: Report,
    deadline: Deadline,
    *,
    profile: Path | None = None,
) -> int:
    """Every round of every target, interleaved; returns messages injected."""
    injected = 0
    for number in range(1, plan.rounds + 1):
        if number > 1 and deadline.spent:
            report.fail("end to end", f"time budget spent; stopped after {number - 1} rounds")
            break
        for side in sides:
            if not any(r.error for r in side.results):
                injected += run_round(plan, sink, side, number, profile)
    for side in sides:
        summarise(side, report)
    return injected


def summarise(side: Contender, report: Report) -> None:
    """The best round's throughput and the median round's CPU into the report's figures."""
    figures = report.figures
    figures[f"{side.key}_runs_msgs_per_s"] = [r.e2e_msgs_per_s for r in side.results]
    if side.name == "postfix":
        cpu_figures = {"postfix_cpu_ms_per_msg": [c.get("postfix") for c in side.cpu]}
    else:
        cpu_figures = {
            "ours_cpu_ms_per_msg": [c.get("ours") for c in side.cpu],
            "broker_cpu_ms_per_msg_e2e": [c.get("broker") for c in side.cpu],
            "ours_with_broker_cpu_ms_per_msg": [
                bench_cpu.total(c.get("ours"), c.get("broker")) for c in side.cpu
            ],
        }
    for name, runs in cpu_figures.items():
        figures[f"{name}_runs"] = runs
        figures[name] = bench_cpu.median(runs)
    try:
        best = best_round(side.results)
    except (RuntimeError, ValueError) as exc:
        report.fail(f"end to end, {side.name}", exc)
        return
    figures[f"{side.key}_msgs_per_s"] = best.e2e_msgs_per_s
    figures[f"{side.key}_inject_msgs_per_s"] = best.inject_msgs_per_s
