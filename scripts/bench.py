"""`make bench`: Mailsluice's throughput, latency and memory, against a Postfix relay.

One run on this machine, everything on 127.0.0.x, every process started here stopped by its pid:

1. smtp-sink alone: smtp-source straight into it, to show it is never the bottleneck.
2. A private Postfix instance relaying to that smtp-sink, warmed up (the peer).
3. Mailsluice: a throwaway Kafka, `mailsluice ingest` and (later) `mailsluice delivery --pool
   default`, routed to the same smtp-sink; a local DNS server answers the bench domains.
   - ingest: N messages from smtp-source into ingest with no delivery worker running (a 250 means
     Kafka acked the record with acks=all);
   - delivery: a worker started on that pre-filled queue drains it to smtp-sink.
4. End to end, the same N-message workload through Postfix and through Mailsluice (smtp-source
   -> relay -> smtp-sink, first injected to last received), rounds interleaved so both see the
   same background load; the best round of each counts, as other work on the machine only ever
   slows a run down. ratio_vs_postfix is ours over Postfix's. Each round also measures the
   CPU each side spent (bench_cpu: the kernel's accounting of the process trees; Postfix's
   whole master tree; ours = ingest + delivery, the Kafka broker apart and added in
   ours_with_broker); the median round counts, cpu_ratio_vs_postfix is ours over Postfix's.
5. Latency: an open-loop client at a moderate rate stamps each message with its due time, a
   small aiosmtpd sink records when it arrives; p50/p99 of the difference.
6. The sink's total is checked against everything accepted (fewer means loss), and the peak RSS
   (VmHWM) of ingest, delivery and, reported apart, the Kafka broker is read.

The ingest and delivery stages report CPU per message too (ingest or delivery, and the
broker). Before the JSON, the targets of issue #18 are printed, met or not (never asserted).

Progress goes to stdout; the last line is one JSON object. A stage that fails prints why, its
figures are null, and the exit status is 1. `loadavg_at_start` says how busy the machine was.

The stages live in neighbouring modules: bench_ours (our pipeline and the queue stages),
bench_latency, bench_postfix (the Postfix peer), bench_smtp (smtp-sink, smtp-source), bench_run
(plan, budget, report), bench_e2e (the end-to-end rounds), bench_cpu (CPU per message),
bench_targets (issue #18's targets) and bench_tools (parsers, figures, processes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import kafka_local
from bench_e2e import Contender, compare_end_to_end
from bench_latency import measure_latency
from bench_ours import queue_stages, record_memory, start_pipeline
from bench_postfix import PostfixPeer
from bench_run import Deadline, Plan, Report, say
from bench_smtp import SmtpSink, measure_relay_e2e
from bench_targets import evaluate_all, lines

POSTFIX_IP = "127.0.0.20"
SINK_IP = "127.0.0.21"
BUDGET_S = 270.0  # whole bench stays under ~5 minutes; later stages are skipped past this


# --------------------------------------------------------------------------- stages


def sink_ceiling(plan: Plan, sink: SmtpSink, report: Report) -> None:
    """smtp-source straight into smtp-sink: the rate no relay in front of it can beat."""
    result = measure_relay_e2e(sink, sink.listen, plan.workload(), 60)
    report.figures["sink_ceiling_msgs_per_s"] = result.e2e_msgs_per_s
    if result.error:
        report.fail("smtp-sink ceiling", result.error)
    else:
        say(f"smtp-sink: takes {result.e2e_msgs_per_s} msg/s straight from smtp-source")


def start_postfix(
    stack: ExitStack, plan: Plan, work: Path, sink: SmtpSink, report: Report
) -> Contender | None:
    """The private Postfix relay, warmed up, as an end-to-end target whose CPU is the master's
    whole tree; None after a failure."""
    listen = f"{POSTFIX_IP}:{kafka_local.free_port(POSTFIX_IP)}"
    peer = PostfixPeer(work / "postfix", listen, sink.listen, plan.concurrency)
    say(f"postfix: starting a private instance on {listen}, relaying to {sink.listen}")
    stack.callback(stop_postfix, peer, report)
    try:
        peer.start()
        say(f"postfix: master pid {peer.master_pid}; warm-up")
        warm = measure_relay_e2e(sink, listen, plan.warmup(), 30)
        if warm.error:
            raise RuntimeError(f"warm-up: {warm.error}")
    except Exception as exc:
        report.fail("postfix", f"{exc}\n{peer.maillog_tail(10)}")
        return None
    assert peer.master_pid is not None  # start() returned
    return Contender("postfix", listen, {"postfix": [peer.master_pid]})


def stop_postfix(peer: PostfixPeer, report: Report) -> None:
    for problem in peer.stop():
        report.fail("postfix stop", problem)
    say("postfix: stopped")


def check_sink_total(sink: SmtpSink, base: int, expected: int, report: Report) -> None:
    """Every message accepted (by ingest or Postfix) reached the sink once: fewer means loss,
    more means duplicates (at least once allows a few) or stray DSNs."""
    time.sleep(1.0)  # a late duplicate would still be on its way
    got = sink.messages - base
    report.figures["sink_extra_messages"] = got - expected
    say(f"sink: {got} messages received, {expected} accepted")
    if got < expected:
        report.fail("sink count", f"{expected - got} of {expected} accepted messages never arrived")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages per run (N)")
    parser.add_argument("--size", type=int, default=2048, help="body bytes per message")
    parser.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions")
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="one connection per message (default: sessions reuse their connection)",
    )
    parser.add_argument("--latency-rate", type=float, default=50.0, help="messages/s")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=20, help="per-destination limit")
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end runs; best counts")
    parser.add_argument("--skip-postfix", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample ingest and delivery with py-spy in the first end-to-end round; "
        "collapsed stacks to DIR, top functions printed",
    )
    return parser.parse_args(argv)


def run_bench(
    args: argparse.Namespace, plan: Plan, work: Path, report: Report, deadline: Deadline
) -> None:
    """Every stage in order; whatever was started is stopped (by pid) on the way out."""
    with ExitStack() as stack:
        sink = SmtpSink(f"{SINK_IP}:{kafka_local.free_port(SINK_IP)}", work)
        try:
            sink.start()
        except Exception as exc:
            report.fail("smtp-sink", exc)
            return
        stack.callback(sink.stop)
        say(f"smtp-sink on {sink.listen} (pid {sink.pid})")
        sink_ceiling(plan, sink, report)
        sides: list[Contender] = []
        if not args.skip_postfix and (postfix := start_postfix(stack, plan, work, sink, report)):
            sides.append(postfix)
        pipe = None if args.skip_ours else start_pipeline(stack, plan, work, sink, report)
        sink_base = sink.messages
        if pipe is not None and queue_stages(plan, sink, pipe, report):
            ours = Contender("ours", pipe.target, pipe.cpu_groups())
            ours.profiled = pipe.pids()
            sides.append(ours)
        accepted = pipe.accepted if pipe is not None else 0
        accepted += compare_end_to_end(plan, sink, sides, report, deadline, profile=args.profile)
        if any(side.name == "ours" for side in sides) and pipe is not None:
            if deadline.spent:
                report.fail("latency", "time budget spent; skipped")
            else:
                try:
                    measure_latency(plan, pipe.latency_sink, pipe.target, report)
                except Exception as exc:
                    report.fail("latency", exc)
        check_sink_total(sink, sink_base, accepted, report)
        if pipe is not None:
            record_memory(pipe, report)
        say("stopping everything")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(
        messages=args.messages,
        size=args.size,
        sessions=args.sessions,
        reuse=not args.new_connections,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds,
        concurrency=args.concurrency,
        rounds=args.rounds,
    )
    report = Report()
    report.figures["workload"] = {
        "messages": plan.messages,
        "body_bytes": plan.size,
        "sessions": plan.sessions,
        "connection_reuse": plan.reuse,
        "per_destination_concurrency": plan.concurrency,
        "end_to_end_rounds": plan.rounds,
        "cpus": os.cpu_count(),
    }
    # Other work on the machine skews every figure; say how busy it was.
    report.figures["loadavg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    deadline = Deadline(BUDGET_S)
    work = Path(tempfile.mkdtemp(prefix="mailsluice-bench-"))
    work.chmod(0o755)  # Postfix daemons, running as `postfix`, must reach their queue
    say(f"work dir {work}")
    # SIGTERM from outside: unwind through the finally blocks, which stop every child by pid.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_bench(args, plan, work, report, deadline)
    except KeyboardInterrupt:
        report.fail("bench", "interrupted")
    finally:
        if args.keep or report.errors:
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    figures = report.finish()
    figures["targets"] = evaluate_all(figures)
    for line in lines(figures["targets"]):
        say(line)
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
