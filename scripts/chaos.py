"""`make chaos`: the fault run. Mail is injected over SMTP into `mailsluice ingest` at a steady
rate over several connections, one unique recipient per message spread over many destinations;
two `mailsluice delivery` workers deliver it to one counting MX (tests/support/fake_mx.py).
During injection the faults of a seeded schedule (scripts/chaos_plan.py) happen: SIGKILLs of
worker 0 (restarted at once), a graceful broker stop and start after a while down, a SIGKILL of
ingest (restarted), a SIGTERM of worker 1 (restarted). Like kubelet, the run restarts any
process whose /healthz fails three times running or that dies on its own, and counts it.

After injection it waits until every accepted recipient is delivered and the pool's queue is
committed to its end (drain time), checks every worker is alive, ready, live and delivering,
prints the table and last one JSON line. Exit status 1 when the run could not be made or broke
a promise (loss, duplicates >= 0.5%, delivered after 451, not drained, a worker not back).

    .venv/bin/python scripts/chaos.py [--messages 20000 --rate 70 --seed 12 ...]

Every process started here is stopped by its pid. The suite runs a short version with the
session broker (tests/faults/test_fault_run.py) through `fault_run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chaos_plan as plan
import kafka_local
from bench_ours import create_topics
from chaos_inject import inject
from chaos_procs import (
    BrokerControl,
    LocalBroker,
    Proc,
    get,
    ingest_env,
    pipeline_env,
    worker_env,
)

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

LIVENESS_EVERY_S = 2.0
LIVENESS_FAILURES = 3  # kubelet's default failureThreshold
MX_DELAY_S = 0.005
WORKERS_BACK_S = 60.0  # after the drain, the longest a worker may take to be back to work


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Pipeline:
    pool: str
    ingest: Proc
    workers: list[Proc]
    smtp_port: int
    mx: Any  # support.fake_mx.FakeMx
    bootstrap: str
    seen: int = 0  # MX messages already tallied

    @property
    def procs(self) -> list[Proc]:
        return [self.ingest, *self.workers]

    def tally_received(self, tally: plan.Tally) -> None:
        messages = self.mx.messages
        upto = len(messages)  # once: the MX's thread appends while we count
        for message in messages[self.seen : upto]:
            tally.received.update(message.rcpt_tos)
        self.seen = upto


@dataclass
class Run:
    """A run's live state."""

    config: plan.Config
    pipe: Pipeline
    tally: plan.Tally = field(default_factory=plan.Tally)
    faults_done: list[str] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- faults


async def make_fault(kind: str, run: Run, broker: BrokerControl) -> None:
    pipe = run.pipe
    if kind == plan.BROKER_RESTART:
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(run.config.broker_down_s)  # the outage's length
        await asyncio.to_thread(broker.start)
        return
    proc, sig = {
        plan.WORKER_KILL: (pipe.workers[0], signal.SIGKILL),
        plan.WORKER_TERM: (pipe.workers[-1], signal.SIGTERM),
        plan.INGEST_KILL: (pipe.ingest, signal.SIGKILL),
    }[kind]
    async with proc.lock:
        await proc.signal(sig)
        await proc.up()


async def run_faults(run: Run, broker: BrokerControl, started: float) -> None:
    loop = asyncio.get_running_loop()
    for fault in plan.schedule(run.config):
        delay = started + fault.at_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the schedule's time
        at = loop.time() - started
        say(f"fault at +{at:.1f} s: {fault.kind}")
        await make_fault(fault.kind, run, broker)
        run.faults_done.append(f"{fault.kind} +{at:.0f}s")
        say(f"fault {fault.kind} recovered at +{loop.time() - started:.1f} s")


async def watch_liveness(run: Run, stop: asyncio.Event) -> None:
    """Kubelet's part: a process whose /healthz fails LIVENESS_FAILURES times running, or that
    died when no fault was made to it, is restarted (and counted)."""
    failures = {proc.name: 0 for proc in run.pipe.procs}
    while not stop.is_set():
        for proc in run.pipe.procs:
            if proc.lock.locked() or not proc.up_since_start:
                continue  # a fault or a start has it
            died = not proc.running
            status = 0 if died else (await asyncio.to_thread(get, proc.url("/healthz")))[0]
            failures[proc.name] = 0 if status == 200 else failures[proc.name] + 1
            if died or failures[proc.name] >= LIVENESS_FAILURES:
                why = "died" if died else f"/healthz {status}"
                say(f"liveness: restarting {proc.name} ({why}): {proc.tail(5)}")
                run.restarts.append(f"{proc.name}: {why}")
                async with proc.lock:
                    await proc.signal(signal.SIGTERM, wait_s=10)
                    await proc.up()
                failures[proc.name] = 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LIVENESS_EVERY_S)


# --------------------------------------------------------------------------- the end


async def queue_lag(bootstrap: str, pool: str) -> int | None:
    """Records of the pool's queue its group has not committed; None if Kafka does not say."""
    from support.delivery_worker import committed, queue_ends

    from mailsluice.kafka.settings import KafkaSettings

    settings = KafkaSettings(bootstrap=bootstrap)
    try:
        ends, done = await queue_ends(settings, pool), await committed(settings, pool)
    except Exception as exc:  # reported as an unknown lag
        say(f"queue lag unknown: {exc!r}")
        return None
    return sum(max(0, end - done.get(partition, 0)) for partition, end in ends.items())


async def drain(run: Run, ended: float) -> tuple[float | None, int | None]:
    """Wait until every accepted recipient is delivered and the queue lag is 0, within the
    budget; (seconds from `ended`, or None; the lag as last read)."""
    loop = asyncio.get_running_loop()
    lag: int | None = None
    next_say = ended + 15
    while loop.time() < ended + run.config.drain_budget_s:
        run.pipe.tally_received(run.tally)
        missing = sum(1 for r in run.tally.accepted if not run.tally.received[r])
        if not missing:
            lag = await queue_lag(run.pipe.bootstrap, run.pipe.pool)
            if lag == 0:
                return loop.time() - ended, lag
        if loop.time() >= next_say:
            lag = await queue_lag(run.pipe.bootstrap, run.pipe.pool)
            say(f"draining: {missing} accepted not delivered yet, queue lag {lag}")
            next_say += 15
        await asyncio.sleep(0.5)  # the measurement's resolution
    return None, await queue_lag(run.pipe.bootstrap, run.pipe.pool)


def delivered_metric(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mailsluice_delivery_recipients_total"
        and sample.labels.get("result") == "delivered"
    )


def back_to_work(worker: Proc) -> tuple[bool, str]:
    """Alive, ready, live, and delivered something since its last start."""
    if not worker.running:
        return False, "not running"
    for path in ("/readyz", "/healthz"):
        status, body = get(worker.url(path))
        if status != 200:
            return False, f"{path} {status} {body[:200]}"
    delivered = delivered_metric(get(worker.url("/metrics"))[1])
    return delivered > 0, f"delivered {delivered:.0f} since its start #{worker.starts}"


async def workers_back(run: Run, within: float) -> tuple[dict[str, tuple[bool, str]], float]:
    """Each worker's back_to_work, waiting up to `within` seconds for all of them (a worker
    restarted late, or whose clients are still reconnecting, gets that long); the checks and
    the seconds waited."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        checks = {w.name: await asyncio.to_thread(back_to_work, w) for w in run.pipe.workers}
        if all(ok for ok, _ in checks.values()) or loop.time() - began >= within:
            return checks, loop.time() - began
        await asyncio.sleep(1.0)  # the check's resolution


# --------------------------------------------------------------------------- the run


async def start_pipeline(
    stack: AsyncExitStack,
    config: plan.Config,
    broker: BrokerControl,
    work: Path,
    settings: dict[str, str],
) -> Pipeline:
    from support.dns_server import DnsServer
    from support.fake_mx import FakeMx

    mx = FakeMx(delay=MX_DELAY_S).start()
    stack.callback(mx.stop)
    dns = DnsServer()
    dns.start()
    stack.callback(dns.stop)
    pool = f"chaos-{os.urandom(3).hex()}"
    base = {**pipeline_env(broker.bootstrap, dns.nameserver, mx.address), **settings}
    await asyncio.to_thread(create_topics, base, (pool,))
    smtp_port = kafka_local.free_port()
    ingest = Proc(
        "ingest", ["ingest"], ingest_env(base, pool, smtp_port, config.publish_timeout_s), work
    )
    workers = [
        Proc(f"worker-{n}", ["delivery"], worker_env(base, pool, n, config.stall_s), work)
        for n in range(2)
    ]
    pipe = Pipeline(pool, ingest, workers, smtp_port, mx, broker.bootstrap)
    for proc in pipe.procs:
        stack.callback(proc.stop)
        await proc.up()
        say(f"{proc.name}: ready (pid {proc.pid})")
    return pipe


async def fault_run(
    config: plan.Config,
    broker: BrokerControl,
    work: Path,
    settings: dict[str, str] | None = None,
) -> tuple[plan.Figures, dict[str, Any]]:
    """One fault run against `broker` (running); (figures, details for the JSON line).
    `settings`: MAILSLUICE_* for every process on top of the run's own (e.g. a cluster's
    MAILSLUICE_KAFKA_REPLICATION_FACTOR=3 and MAILSLUICE_KAFKA_MIN_INSYNC_REPLICAS=2)."""
    config.validate()
    async with AsyncExitStack() as stack:
        pipe = await start_pipeline(stack, config, broker, work, settings or {})
        run = Run(config, pipe)
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_liveness(run, stop))
        loop = asyncio.get_running_loop()
        started = loop.time() + 1.0
        say(f"injecting {config.messages} messages at {config.rate:g}/s, seed {config.seed}")
        try:
            await asyncio.gather(
                inject(config, pipe.smtp_port, run.tally, started), run_faults(run, broker, started)
            )
            ended = loop.time()
            say(f"injection and faults over after {ended - started:.1f} s; draining")
            drain_s, lag = await drain(run, ended)
            checks, back_s = await workers_back(run, WORKERS_BACK_S)
        finally:
            stop.set()
            await watcher
        run.pipe.tally_received(run.tally)
        ending = plan.Ending(
            drain_s=None if drain_s is None else round(drain_s, 1),
            queue_lag=lag,
            liveness_restarts=len(run.restarts),
            faults=len(run.faults_done),
            workers=len(checks),
            workers_back=sum(ok for ok, _ in checks.values()),
        )
        details = {
            "faults_done": run.faults_done,
            "restarts": run.restarts,
            "workers_check": {name: why for name, (_, why) in checks.items()},
            "workers_back_after_s": round(back_s, 1),
            "refused_codes": sorted(set(run.tally.refused.values())),
            **samples(run.tally),
        }
        return plan.figures(run.tally, ending), details


def samples(tally: plan.Tally, most: int = 20) -> dict[str, list[str]]:
    """Some lost, duplicated and delivered after a 4xx/5xx recipients, to look up in the logs
    (a recipient's number over the rate is when it was sent, after the start of injection)."""
    received = tally.received
    return {
        "lost_sample": sorted(r for r in tally.accepted if not received[r])[:most],
        "duplicate_sample": sorted(r for r in tally.accepted if received[r] > 1)[:most],
        "after_451_sample": sorted(r for r in tally.refused if received[r])[:most],
    }


def report(
    fig: plan.Figures,
    config: plan.Config,
    details: dict[str, Any],
    out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Print the table; the JSON object."""
    out(f"fault run: {config.messages} messages at {config.rate:g}/s, seed {config.seed}")
    for line in plan.table(fig, details.get("faults_done")):
        out(line)
    for name, why in details.get("workers_check", {}).items():
        out(f"  {name}: {why}")
    out(f"  workers checked {details.get('workers_back_after_s')} s after the drain")
    for name in ("lost_sample", "duplicate_sample", "after_451_sample"):
        if details.get(name):
            out(f"  {name}: {' '.join(details[name])}")
    return plan.result(fig, config, details)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[plan.Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = plan.Config()
    for item in dataclasses.fields(plan.Config):
        value = getattr(defaults, item.name)
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            type=type(value),
            help=f"default {value} (--suite: {getattr(plan.SUITE, item.name)})",
        )
    parser.add_argument("--suite", action="store_true", help="the suite's short run's settings")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    given = {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(plan.Config)
        if getattr(args, item.name) is not None
    }
    return dataclasses.replace(plan.SUITE if args.suite else defaults, **given), args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def _main(config: plan.Config, work: Path, result: dict[str, Any]) -> None:
    broker = LocalBroker(work / "kafka")
    say(f"kafka: starting a broker on {broker.bootstrap}")
    try:
        await asyncio.to_thread(broker.start)
        fig, details = await fault_run(config, broker, work)
    finally:
        await asyncio.to_thread(broker.stop)
    result.update(report(fig, config, details))


def main(argv: list[str] | None = None) -> int:
    config, args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mailsluice-chaos-"))
    say(f"work dir {work}")
    signal.signal(signal.SIGTERM, _interrupt)  # unwind through the stops (by pid)
    result: dict[str, Any] = {"stage": "chaos", "errors": []}
    started = time.monotonic()
    try:
        asyncio.run(_main(config, work, result))
    except KeyboardInterrupt:
        result["errors"].append("interrupted")
    except Exception as exc:
        result["errors"].append(f"chaos: {exc}")
        say(f"FAILED {exc}")
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    failed = bool(result["errors"] or result.get("problems"))
    if args.keep or failed:
        say(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
