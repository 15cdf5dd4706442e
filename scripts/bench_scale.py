"""`make bench`, scale-out: how the drain of one pool grows with its delivery workers.

A throwaway Kafka broker, `mailsluice ingest` and one smtp-sink on 127.0.0.x. The pool's
queue has 12 partitions and the mail goes to 24 destinations (domains picked so that two land
on each partition, bench_scale_plan.spread_domains), all routed to the one smtp-sink by a
static route. For 1, 2 and 4 workers in one consumer group, each round:

1. prefills a backlog (default 15,000 messages, an equal share per domain; with 6,000 the
   drain lasted 3 s and its ramp-up hid the scaling) through ingest with no worker running;
2. starts the k workers side by side (their own HTTP ports) and times the drain at the sink
   from the first message to the last; and, apart, from the moment the last worker had its
   partitions (the broker waits 3 s for a new group's members, group.initial.rebalance.delay.ms
   as in Kafka's defaults, so the workers normally start together);
3. reads each worker's CPU (the kernel's accounting, bench_cpu) from its readiness to the last
   message, its delivery attempts from its /metrics and its peak RSS; then stops the workers
   by pid before the next round's backlog.

Destinations are a relay of one's own as in bench.py (adaptive off: the closed-loop shaper
would start each at a slow rate), with a per-destination connection limit. On this 2-core
machine the throughput flattens at the cores; msgs per worker CPU second and each worker's
share of a core show whether the work itself scales.

Progress goes to stdout; the last line is one JSON object; exit status 1 when a round could
not run. Every process started here is stopped by its pid, also on failure and SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_cpu
import kafka_local
from bench_ours import Service, create_topics, service_env, start_broker, start_dns
from bench_run import Deadline, Plan, run_stage, say
from bench_scale_plan import (
    WorkerFigures,
    attempts,
    round_figures,
    round_lines,
    speedups,
    spread_domains,
)
from bench_smtp import SmtpSink, SourceProcess, Workload, source_command
from bench_tools import new_result, peak_rss_mb, tail

SINK_IP = "127.0.0.61"
INGEST_IP = "127.0.0.62"
PARTITIONS = 12
DOMAINS = 24
BUDGET_S = 240.0  # the stage stays under ~4 minutes; later rounds are skipped past this


@dataclass
class Bench:
    """What every round shares: the sink, the services' environment, ingest, the broker."""

    args: argparse.Namespace
    work: Path
    sink: SmtpSink
    env: dict[str, str]
    ingest_target: str
    kafka_dir: Path
    domains: list[str]
    ingest_pid: int

    @property
    def kafka_pids(self) -> list[int]:
        pid = kafka_local.running_pid(self.kafka_dir)
        return [pid] if pid else []


def start_shared(stack: ExitStack, args: argparse.Namespace, work: Path) -> Bench:
    """smtp-sink, broker, DNS, topics (12 queue partitions) and ingest, stopped with `stack`."""
    sink = SmtpSink(f"{SINK_IP}:{kafka_local.free_port(SINK_IP)}", work)
    sink.start()
    stack.callback(sink.stop)
    say(f"smtp-sink on {sink.listen} (pid {sink.pid})")
    # Kafka's own default: the first worker to join waits up to 3 s for the others, so the
    # round's workers start with their share of the partitions (the suite's brokers use 0).
    bootstrap = start_broker(stack, work, {"group.initial.rebalance.delay.ms": "3000"})
    nameserver = start_dns(stack, sink.listen, sink.listen)
    ports = {
        "ingest_smtp": kafka_local.free_port(INGEST_IP),
        "ingest_http": kafka_local.free_port(),
        "delivery_http": kafka_local.free_port(),
        "latency_sink": kafka_local.free_port(),
    }
    # Only the per-destination concurrency of the plan matters to service_env.
    plan = Plan(args.messages, args.size, 1, True, 0.0, 0.0, args.concurrency, 1)
    env = service_env(bootstrap, nameserver, ports, sink.listen, plan, ingest_ip=INGEST_IP)
    env["MAILSLUICE_KAFKA_QUEUE_PARTITIONS"] = str(PARTITIONS)
    create_topics(env)
    ingest = Service("ingest", ["ingest"], env, work)
    stack.callback(ingest.stop)
    ingest.start(f"http://127.0.0.1:{ports['ingest_http']}/readyz")
    target = f"{INGEST_IP}:{ports['ingest_smtp']}"
    say(f"ingest: ready on {target} (pid {ingest.pid}); queue of {PARTITIONS} partitions")
    domains = spread_domains(DOMAINS, PARTITIONS)
    assert ingest.pid is not None
    return Bench(args, work, sink, env, target, work / "kafka", domains, ingest.pid)


def prefill(bench: Bench) -> int:
    """The backlog, an equal share per domain, one smtp-source per domain side by side;
    returns the messages accepted (all of them, or RuntimeError)."""
    per_domain = bench.args.messages // len(bench.domains)
    meter = bench_cpu.Meter({"ingest": [bench.ingest_pid], "broker": bench.kafka_pids})
    meter.start()
    started = time.monotonic()
    sources = [
        SourceProcess(
            source_command(
                bench.ingest_target,
                Workload(
                    per_domain, bench.args.sessions, bench.args.size, True, recipient=f"to@{domain}"
                ),
            )
        )
        for domain in bench.domains
    ]
    try:
        runs = [source.result(120) for source in sources]
    finally:
        for source in sources:
            source.kill()
    accepted = sum(run.completed for run in runs)
    failed = [run for run in runs if run.returncode != 0 or run.completed < per_domain]
    if failed:
        raise RuntimeError(
            f"prefill: {len(failed)} of {len(runs)} smtp-source runs failed "
            f"({accepted} accepted): {failed[0].stderr[-300:]}"
        )
    seconds = time.monotonic() - started
    cpu = meter.stop(accepted)
    say(
        f"prefill: {accepted} messages to {len(bench.domains)} domains in {seconds:.1f} s, "
        f"{bench_cpu.describe(cpu['ingest'], 'ingest')}, "
        f"{bench_cpu.describe(cpu['broker'], 'broker')}"
    )
    return accepted


def new_workers(bench: Bench, count: int) -> tuple[list[Service], list[str]]:
    """`count` delivery workers of the default pool (not started) and their /metrics URLs."""
    workers, urls = [], []
    for index in range(1, count + 1):
        port = kafka_local.free_port()
        env = {
            **bench.env,
            "MAILSLUICE_DELIVERY_HTTP_PORT": str(port),
            "MAILSLUICE_OUTBOUND_EHLO_NAME": f"w{index}.scale.bench.invalid",
        }
        name = f"delivery-{count}w-{index}"
        workers.append(Service(name, ["delivery", "--pool", "default"], env, bench.work))
        urls.append(f"http://127.0.0.1:{port}")
    return workers, urls


@dataclass
class Readiness:
    """Each worker's CPU seconds when it turned ready (its start-up is not CPU per message),
    the broker's when the first did, and when the last did (monotonic)."""

    cpu_s: list[float | None]
    broker_cpu_s: float | None
    all_at: float


def wait_all_ready(
    bench: Bench, workers: list[Service], urls: list[str], timeout: float = 90.0
) -> Readiness:
    """Poll every worker's /readyz together (ready = it has had its partitions)."""
    baselines: dict[int, float | None] = {}
    broker: float | None = None
    deadline = time.monotonic() + timeout
    while len(baselines) < len(workers):
        if time.monotonic() > deadline:
            late = [w.name for i, w in enumerate(workers) if i not in baselines]
            raise RuntimeError(f"not ready after {timeout:.0f}s: {late}")
        for index, worker in enumerate(workers):
            if index not in baselines and worker.ready(f"{urls[index]}/readyz"):
                assert worker.pid is not None
                now = bench_cpu.sample({"w": [worker.pid], "broker": bench.kafka_pids})
                baselines[index] = now["w"]
                broker = now["broker"] if broker is None else broker
        time.sleep(0.05)
    return Readiness([baselines[i] for i in range(len(workers))], broker, time.monotonic())


def read_attempts(urls: list[str], messages: int, timeout: float = 10.0) -> list[dict[str, int]]:
    """Every worker's attempts by result, once they add up to the messages (a worker counts
    an attempt a moment after the sink has the message) or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for url in urls:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
                found.append(attempts(response.read().decode()))
        if sum(sum(a.values()) for a in found) >= messages or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def measure_workers(
    bench: Bench, workers: list[Service], urls: list[str], ready: Readiness, messages: int
) -> tuple[list[WorkerFigures], float | None]:
    """Right after the last message: each worker's CPU since its readiness, its attempts and
    peak RSS; and the broker's CPU since the first readiness."""
    groups = {str(i): [w.pid] for i, w in enumerate(workers) if w.pid is not None}
    now = bench_cpu.sample({**groups, "broker": bench.kafka_pids})
    before = {str(i): cpu for i, cpu in enumerate(ready.cpu_s)}
    spent = bench_cpu.delta({**before, "broker": ready.broker_cpu_s}, now)
    counted = read_attempts(urls, messages)
    each = [
        WorkerFigures(spent.get(str(i)), counted[i], peak_rss_mb(w.pid) if w.pid else None)
        for i, w in enumerate(workers)
    ]
    return each, spent["broker"]


def stop_all(workers: list[Service]) -> None:
    """SIGTERM every worker first (they drain side by side), then wait for each by pid."""
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.stop()


def drain(bench: Bench, count: int, base: int) -> tuple[float, float]:
    """Wait for the backlog at the sink: the times of its first and last message."""
    first = bench.sink.wait_for(base + 1, 60)
    last = bench.sink.wait_for(base + count, 240) if first is not None else None
    if first is None or last is None:
        raise RuntimeError(f"only {bench.sink.messages - base}/{count} reached the sink")
    return first, last


def run_round(bench: Bench, count: int) -> dict[str, Any]:
    """Prefill, start `count` workers, time the drain, read their figures, stop them."""
    base = bench.sink.messages
    messages = prefill(bench)
    workers, urls = new_workers(bench, count)
    try:
        for worker in workers:
            worker.spawn()
        ready = wait_all_ready(bench, workers, urls)
        say(f"{count} worker(s) ready (pids {[w.pid for w in workers]})")
        first, last = drain(bench, messages, base)
        each, broker_cpu = measure_workers(bench, workers, urls, ready, messages)
    except Exception:
        for worker in workers:
            say(f"{worker.name} log:\n{tail(worker.log_path, 8)}")
        raise
    finally:
        stop_all(workers)
    left = base + messages - bench.sink.count_at(ready.all_at)
    figures = round_figures(
        count,
        messages,
        seconds=last - first,
        all_ready=(left, last - max(ready.all_at, first)),
        each=each,
        broker_cpu_s=broker_cpu,
    )
    figures["sink_extra_messages"] = bench.sink.messages - base - messages
    for line in round_lines(figures):
        say(line)
    return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=15000, help="backlog per round")
    parser.add_argument("--size", type=int, default=2048, help="body bytes per message")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, one round each")
    parser.add_argument("--sessions", type=int, default=2, help="prefill sessions per domain")
    parser.add_argument("--concurrency", type=int, default=5, help="per-destination limit")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    return parser.parse_args(argv)


def run_rounds(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    deadline = Deadline(BUDGET_S)
    with ExitStack() as stack:
        bench = start_shared(stack, args, work)
        for count in result["workload"]["workers"]:
            if deadline.spent:
                result["errors"].append(f"time budget spent; {count} workers skipped")
                continue
            say(f"round: {count} worker(s), backlog {args.messages} messages")
            try:
                result["rounds"].append(run_round(bench, count))
            except Exception as exc:
                result["errors"].append(f"{count} workers: {exc}")
                say(f"FAILED {count} workers: {exc}")
        say("stopping everything")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    workload = {
        "messages": args.messages - args.messages % DOMAINS,
        "body_bytes": args.size,
        "domains": DOMAINS,
        "partitions": PARTITIONS,
        "per_destination_concurrency": args.concurrency,
        "workers": counts,
    }
    result = new_result("scale-out", workload=workload, rounds=[])
    run_stage(
        "mailsluice-bench-scale-",
        args.keep,
        result["errors"],
        lambda work: run_rounds(args, work, result),
        "start",
    )
    result["speedup_vs_1_worker"] = speedups(result["rounds"])
    print(json.dumps(result, sort_keys=True), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
