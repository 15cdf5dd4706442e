"""`make bench`: Mailsluice's throughput, latency and memory, against a Postfix relay.

One run on this machine, everything on 127.0.0.x, every process started here stopped by its pid:

0. smtp-sink alone: smtp-source straight into it, to show it is never the bottleneck.
1. Postfix peer: a private Postfix instance relays N messages (smtp-source -> postfix ->
   smtp-sink); its end-to-end rate is the yardstick.
2. Mailsluice: a throwaway Kafka, `mailsluice ingest` and `mailsluice delivery --pool default`,
   routed to the same smtp-sink:
   - ingest: N messages from smtp-source into ingest with no delivery worker running (a 250 means
     Kafka acked the record);
   - delivery: a worker started on that pre-filled queue drains it to smtp-sink;
   - end to end: the same N-message workload as Postfix's, smtp-source -> ingest -> Kafka ->
     delivery -> smtp-sink, first injected to last received;
   - latency: an open-loop client at a moderate rate stamps each message with its due time, a
     small aiosmtpd sink records when it arrives; p50/p99 of the difference;
   - memory: peak RSS (VmHWM) of ingest, delivery and (separately) the Kafka broker;
   - the sink's total is checked: fewer messages than queued means loss.

The end-to-end runs (Postfix's and ours) are repeated (--rounds) and the best counts, since
other work on the machine only ever slows a run down; `loadavg_at_start` says how busy it was.

Progress goes to stdout; the last line is one JSON object. A stage that fails prints why, its
figures are null, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_postfix as bp
import kafka_local

ROOT = Path(__file__).resolve().parents[1]
MAILSLUICE = ROOT / ".venv" / "bin" / "mailsluice"
POSTFIX_IP = "127.0.0.20"
SINK_IP = "127.0.0.21"
INGEST_IP = "127.0.0.22"
LATENCY_SINK_IP = "127.0.0.23"
DNS_IP = "127.0.0.24"
LATENCY_DOMAIN = "latency.example"
SENT_HEADER = "X-Bench-Sent"
SENT_RE = re.compile(rb"^X-Bench-Sent: *([0-9.]+)\r?$", re.MULTILINE | re.IGNORECASE)
REQUIRED_KEYS = (
    "ingest_msgs_per_s",
    "delivery_msgs_per_s",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "peak_rss_mb",
    "postfix_msgs_per_s",
    "ratio_vs_postfix",
)
BUDGET_S = 270.0  # whole bench stays under ~5 minutes; later stages are skipped past this


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
        """Derive peak_rss_mb and the ratio, and return the JSON object."""
        figures = self.figures
        by_process = figures.get("peak_rss_mb_by_process") or {}
        ours = [v for k, v in by_process.items() if k != "kafka" and v is not None]
        if ours and len(ours) == len([k for k in by_process if k != "kafka"]):
            figures["peak_rss_mb"] = max(ours)
        figures["ratio_vs_postfix"] = ratio(
            figures.get("ours_e2e_msgs_per_s"), figures.get("postfix_msgs_per_s")
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


def latency_summary(samples_ms: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of latencies in milliseconds, rounded."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "p50": r(bp.percentile(samples_ms, 50)),
        "p99": r(bp.percentile(samples_ms, 99)),
        "max": r(max(samples_ms) if samples_ms else None),
    }


def parse_sent_stamp(content: bytes) -> float | None:
    """The epoch seconds in the X-Bench-Sent header of a raw message, if any."""
    header_end = content.find(b"\r\n\r\n")
    if header_end < 0:
        header_end = content.find(b"\n\n")
    head = content if header_end < 0 else content[:header_end]
    match = SENT_RE.search(head)
    return float(match.group(1)) if match else None


# --------------------------------------------------------------------------- services


class Service:
    """One `mailsluice` subcommand as a child process, with its log and readiness URL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, ready_url: str, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(MAILSLUICE), *self.argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops us by pid
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited {self.proc.returncode}: {bp._tail(self.log_path, 15)}"
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s at {ready_url}")

    def peak_rss_mb(self) -> float | None:
        return bp.peak_rss_mb(self.proc.pid) if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            bp.stop_pid(self.proc, timeout)


class LatencySink:
    """An aiosmtpd server that records (sent stamp, received time) for every message."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.samples_ms: list[float] = []
        self.unstamped = 0
        self._lock = threading.Lock()
        self._controller: Any = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received = time.time()
        sent = parse_sent_stamp(envelope.original_content or envelope.content or b"")
        with self._lock:
            if sent is None:
                self.unstamped += 1
            else:
                self.samples_ms.append((received - sent) * 1000)
        return "250 2.0.0 OK"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.samples_ms) + self.unstamped

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()


async def _latency_client(
    target: tuple[str, int], rate_per_s: float, seconds: float, connections: int, size: int
) -> tuple[int, int]:
    """Send rate*seconds messages open-loop; each stamped with its due time. (sent, failed)."""
    import aiosmtplib

    host, port = target
    total = int(rate_per_s * seconds)
    pool: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
    for _ in range(connections):
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        await client.connect()
        pool.put_nowait(client)
    body = ("x" * 76 + "\r\n") * max(1, size // 78)
    failed = 0

    async def send(seq: int, due_epoch: float) -> None:
        nonlocal failed
        message = (
            f"From: <bench@example.com>\r\nTo: <lat{seq}@{LATENCY_DOMAIN}>\r\n"
            f"Subject: latency {seq}\r\nMessage-ID: <lat{seq}.{due_epoch}@bench.invalid>\r\n"
            f"{SENT_HEADER}: {due_epoch:.6f}\r\n\r\n{body}"
        )
        client = await pool.get()
        try:
            if not client.is_connected:
                await client.connect()
            await client.sendmail("bench@example.com", [f"lat{seq}@{LATENCY_DOMAIN}"], message)
        except (aiosmtplib.SMTPException, OSError):
            failed += 1
            client.close()
        finally:
            pool.put_nowait(client)

    loop = asyncio.get_running_loop()
    start_mono, start_epoch = loop.time(), time.time()
    tasks = []
    for seq in range(total):
        offset = seq / rate_per_s
        await asyncio.sleep(max(0.0, start_mono + offset - loop.time()))
        # Stamp the due time, not the send time: a late send is latency too.
        tasks.append(asyncio.create_task(send(seq, start_epoch + offset)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        client = pool.get_nowait()
        if client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
    return total, failed


# --------------------------------------------------------------------------- stages


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

    def workload(self) -> bp.Workload:
        return bp.Workload(self.messages, self.sessions, self.size, self.reuse)

    def warmup(self) -> bp.Workload:
        return bp.Workload(50, 5, self.size, self.reuse)


def sink_ceiling(plan: Plan, sink: bp.SmtpSink, report: Report) -> None:
    """smtp-source straight into smtp-sink: the rate no relay in front of it can beat."""
    result = bp.measure_relay_e2e(sink, sink.listen, plan.workload(), 60)
    report.figures["sink_ceiling_msgs_per_s"] = result.e2e_msgs_per_s
    if result.error:
        report.fail("smtp-sink ceiling", result.error)
    else:
        say(f"smtp-sink: takes {result.e2e_msgs_per_s} msg/s straight from smtp-source")


def start_postfix(
    stack: ExitStack, plan: Plan, work: Path, sink: bp.SmtpSink, report: Report
) -> str | None:
    """The private Postfix relay, warmed up; its SMTP host:port, or None after a failure."""
    listen = f"{POSTFIX_IP}:{kafka_local.free_port(POSTFIX_IP)}"
    peer = bp.PostfixPeer(work / "postfix", listen, sink.listen, plan.concurrency)
    say(f"postfix: starting a private instance on {listen}, relaying to {sink.listen}")
    stack.callback(stop_postfix, peer, report)
    try:
        peer.start()
        say(f"postfix: master pid {peer.master_pid}; warm-up")
        warm = bp.measure_relay_e2e(sink, listen, plan.warmup(), 30)
        if warm.error:
            raise RuntimeError(f"warm-up: {warm.error}")
    except Exception as exc:
        report.fail("postfix", f"{exc}\n{peer.maillog_tail(10)}")
        return None
    return listen


def stop_postfix(peer: bp.PostfixPeer, report: Report) -> None:
    for problem in peer.stop():
        report.fail("postfix stop", problem)
    say("postfix: stopped")


def start_dns(stack: ExitStack, sink: str, latency_sink: str) -> str:
    """A local DNS server with MX records for the bench domains; returns 'ip:port'.

    Ingest checks recipient domains at RCPT (or not, when MAILSLUICE_INGEST_VERIFY_DOMAINS is
    false); either way no query leaves the machine, and a cached MX check is what production
    pays. The test suite's DNS server serves the zone.
    """
    tests_dir = str(ROOT / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from support.dns_server import DnsServer

    server = DnsServer(DNS_IP, 0)
    server.start()
    stack.callback(server.stop)
    domains = {"example.net": sink, "example.com": sink, LATENCY_DOMAIN: latency_sink}
    for domain, hostport in domains.items():
        server.set_mx(domain, [(10, f"mx.{domain}")], ttl=3600)
        server.set_a(f"mx.{domain}", [bp.split_hostport(hostport)[0]], ttl=3600)
    return str(server.nameserver)


def service_env(
    bootstrap: str, nameserver: str, ports: dict[str, int], sink: str, plan: Plan
) -> dict[str, str]:
    return {
        **os.environ,
        "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "MAILSLUICE_DNS_NAMESERVERS": nameserver,
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
        "MAILSLUICE_INGEST_LISTEN_HOST": INGEST_IP,
        "MAILSLUICE_INGEST_LISTEN_PORT": str(ports["ingest_smtp"]),
        "MAILSLUICE_INGEST_HTTP_HOST": "127.0.0.1",
        "MAILSLUICE_INGEST_HTTP_PORT": str(ports["ingest_http"]),
        "MAILSLUICE_INGEST_HOSTNAME": "ingest.bench.invalid",
        # The Postfix peer has no greet pause and no recipient-domain DNS checks either.
        "MAILSLUICE_INGEST_GREET_PAUSE_S": "0",
        "MAILSLUICE_INGEST_VERIFY_DOMAINS": "false",
        "MAILSLUICE_DELIVERY_HTTP_HOST": "127.0.0.1",
        "MAILSLUICE_DELIVERY_HTTP_PORT": str(ports["delivery_http"]),
        # Same per-destination concurrency as the Postfix peer; no rate cap.
        "MAILSLUICE_DELIVERY_DEST_MAX_CONCURRENCY": str(plan.concurrency),
        "MAILSLUICE_DELIVERY_DEST_MAX_RATE": "1000000",
        "MAILSLUICE_DELIVERY_DEST_BURST": "100000",
        "MAILSLUICE_OUTBOUND_STATIC_ROUTES": (
            f"{LATENCY_DOMAIN}={LATENCY_SINK_IP}:{ports['latency_sink']},*={sink}"
        ),
        "MAILSLUICE_OUTBOUND_ALLOW_PRIVATE_DESTINATIONS": "true",
        "MAILSLUICE_OUTBOUND_TLS_POLICY": "none",
        "MAILSLUICE_OUTBOUND_EHLO_NAME": "delivery.bench.invalid",
    }


class Deadline:
    """The whole bench's time budget; a stage past it is skipped (and reported)."""

    def __init__(self, budget: float) -> None:
        self.end = time.monotonic() + budget

    @property
    def spent(self) -> bool:
        return time.monotonic() > self.end


@dataclass
class Pipeline:
    """Our running services for one bench run."""

    kafka_dir: Path
    ports: dict[str, int]
    target: str  # ingest's SMTP host:port
    ingest: Service
    delivery: Service
    latency_sink: LatencySink
    queued: int = 0  # accepted by ingest, for the delivery stage to drain
    accepted: int = 0  # accepted by ingest in the queue stages, all bound for smtp-sink


def start_pipeline(
    stack: ExitStack, plan: Plan, work: Path, sink: bp.SmtpSink, report: Report
) -> Pipeline | None:
    """Kafka, topics, DNS, latency sink and ingest (delivery starts later, on a full queue).

    Everything started is registered on `stack` to be stopped by pid; None after a failure.
    """
    if not MAILSLUICE.exists():
        report.fail("mailsluice", f"{MAILSLUICE} missing (run make setup)")
        return None
    kafka_dir = work / "kafka"
    ports = {
        "kafka": kafka_local.free_port(),
        "ingest_smtp": kafka_local.free_port(INGEST_IP),
        "ingest_http": kafka_local.free_port(),
        "delivery_http": kafka_local.free_port(),
        "latency_sink": kafka_local.free_port(LATENCY_SINK_IP),
    }
    say(f"kafka: starting a broker on 127.0.0.1:{ports['kafka']}")
    try:
        state = kafka_local.start(kafka_dir, port=ports["kafka"])
    except Exception as exc:
        report.fail("kafka", exc)
        return None
    stack.callback(kafka_local.stop, kafka_dir)
    latency_hostport = f"{LATENCY_SINK_IP}:{ports['latency_sink']}"
    nameserver = start_dns(stack, sink.listen, latency_hostport)
    env = service_env(state.bootstrap, nameserver, ports, sink.listen, plan)
    topics = subprocess.run(
        [str(MAILSLUICE), "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )
    if topics.returncode != 0:
        report.fail("topics", topics.stderr.strip() or topics.stdout.strip())
        return None
    latency_sink = LatencySink(LATENCY_SINK_IP, ports["latency_sink"])
    latency_sink.start()
    stack.callback(latency_sink.stop)
    ingest = Service("ingest", ["ingest"], env, work)
    delivery = Service("delivery", ["delivery", "--pool", "default"], env, work)
    stack.callback(delivery.stop)
    stack.callback(ingest.stop)
    target = f"{INGEST_IP}:{ports['ingest_smtp']}"
    try:
        ingest.start(f"http://127.0.0.1:{ports['ingest_http']}/readyz")
    except Exception as exc:
        report.fail("ingest start", exc)
        return None
    say(f"ingest: ready on {target} (pid {ingest.pid})")
    return Pipeline(kafka_dir, ports, target, ingest, delivery, latency_sink)


def queue_stages(plan: Plan, sink: bp.SmtpSink, pipe: Pipeline, report: Report) -> bool:
    """Ingest into a queue nobody drains, then a delivery worker drains it; True when the
    worker is up for the stages that follow."""
    try:
        _ingest(plan, pipe, report)
    except Exception as exc:
        report.fail("ingest", exc)
    try:
        _delivery(sink, pipe, report)
    except Exception as exc:
        report.fail("delivery", exc)
    proc = pipe.delivery.proc
    return proc is not None and proc.poll() is None


def record_memory(pipe: Pipeline, report: Report) -> None:
    """Peak RSS of our processes (and of the broker, reported apart); early exits are errors."""
    rss = {"ingest": pipe.ingest.peak_rss_mb(), "delivery": pipe.delivery.peak_rss_mb()}
    kafka_pid = kafka_local.running_pid(pipe.kafka_dir)
    rss["kafka"] = bp.peak_rss_mb(kafka_pid) if kafka_pid else None
    report.figures["peak_rss_mb_by_process"] = rss
    report.figures["kafka_peak_rss_mb"] = rss["kafka"]
    say(f"memory: peak RSS MB {rss}")
    for service in (pipe.ingest, pipe.delivery):
        if service.proc is not None and service.proc.poll() is not None:
            report.fail(service.name, f"exited early ({service.proc.returncode})")


def check_sink_total(sink: bp.SmtpSink, base: int, expected: int, report: Report) -> None:
    """Every message accepted (by ingest or Postfix) reached the sink once: fewer means loss,
    more means duplicates (at least once allows a few) or stray DSNs."""
    time.sleep(1.0)  # a late duplicate would still be on its way
    got = sink.messages - base
    report.figures["sink_extra_messages"] = got - expected
    say(f"sink: {got} messages received, {expected} accepted")
    if got < expected:
        report.fail("sink count", f"{expected - got} of {expected} accepted messages never arrived")


def _ingest(plan: Plan, pipe: Pipeline, report: Report) -> None:
    """smtp-source into ingest with no delivery worker: a 250 is a record Kafka acked.

    A warm-up, then plan.rounds runs, the best counting (a fresh JVM broker is slow at
    first, and other work on the machine only slows a run down).
    """
    say(f"ingest: {plan.messages} messages per round, no delivery worker running")
    runs: list[tuple[str, bp.Workload]] = [("warm-up", plan.warmup())]
    runs += [(f"round {n}/{plan.rounds}", plan.workload()) for n in range(1, plan.rounds + 1)]
    rates = []
    for index, (label, work) in enumerate(runs):
        run = bp.run_source(bp.source_command(pipe.target, work), 120)
        pipe.queued += run.completed
        pipe.accepted += run.completed
        if run.returncode != 0 or run.completed < work.count:
            raise RuntimeError(
                f"smtp-source into ingest ({label}): exit {run.returncode}, "
                f"{run.completed}/{work.count} accepted: {run.stderr[-300:]}\n"
                f"{bp._tail(pipe.ingest.log_path, 10)}"
            )
        if index > 0:
            rates.append(bp.rate(work.count, run.seconds))
            say(f"ingest: {label}, {rates[-1]} msg/s accepted ({run.seconds:.2f} s)")
    report.figures["ingest_msgs_per_s"] = max(r or 0.0 for r in rates) or None
    report.figures["ingest_runs_msgs_per_s"] = rates


def _delivery(sink: bp.SmtpSink, pipe: Pipeline, report: Report) -> None:
    """Start the worker on the queue the ingest stage filled; time the drain at the sink."""
    base = sink.messages
    queued, pipe.queued = pipe.queued, 0
    say(f"delivery: starting a worker on the pre-filled queue ({queued} messages)")
    pipe.delivery.start(f"http://127.0.0.1:{pipe.ports['delivery_http']}/readyz")
    say(f"delivery: ready (pid {pipe.delivery.pid})")
    if queued < 2:
        raise RuntimeError("no pre-filled queue to drain (the ingest stage failed)")
    first = sink.wait_for(base + 1, 30)
    last = sink.wait_for(base + queued, 120) if first is not None else None
    if first is None or last is None:
        got = sink.messages - base
        raise RuntimeError(
            f"only {got}/{queued} reached the sink\n{bp._tail(pipe.delivery.log_path, 10)}"
        )
    # Timed from the first message at the sink: group join and start-up are not throughput.
    report.figures["delivery_msgs_per_s"] = bp.rate(queued - 1, last - first)
    say(f"delivery: {report.figures['delivery_msgs_per_s']} msg/s drained ({last - first:.2f} s)")


def best_round(results: list[bp.PeerResult]) -> bp.PeerResult:
    """The fastest run (other work on the machine only ever slows a run down); raises if any
    run failed."""
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(failed[0])
    return max(results, key=lambda r: r.e2e_msgs_per_s or 0.0)


def compare_end_to_end(
    plan: Plan, sink: bp.SmtpSink, targets: dict[str, str], report: Report, deadline: Deadline
) -> int:
    """The same workload through each target ('postfix', 'ours') -> smtp-sink, rounds
    interleaved so that both see the same background load; returns messages injected."""
    results: dict[str, list[bp.PeerResult]] = {name: [] for name in targets}
    injected = 0
    for number in range(1, plan.rounds + 1):
        if number > 1 and deadline.spent:
            report.fail("end to end", f"time budget spent; stopped after {number - 1} rounds")
            break
        for name, target in targets.items():
            if any(r.error for r in results[name]):
                continue
            say(
                f"end to end, {name}: round {number}/{plan.rounds}, {plan.messages} messages of "
                f"{plan.size} bytes over {plan.sessions} sessions -> sink"
            )
            result = bp.measure_relay_e2e(sink, target, plan.workload(), 120)
            injected += result.injected
            results[name].append(result)
            if not result.error:
                say(
                    f"end to end, {name}: {result.e2e_msgs_per_s} msg/s ({result.seconds} s), "
                    f"injected at {result.inject_msgs_per_s} msg/s"
                )
    for name, runs in results.items():
        key = "postfix" if name == "postfix" else "ours_e2e"
        report.figures[f"{key}_runs_msgs_per_s"] = [r.e2e_msgs_per_s for r in runs]
        try:
            best = best_round(runs)
        except (RuntimeError, ValueError) as exc:
            report.fail(f"end to end, {name}", exc)
            continue
        report.figures[f"{key}_msgs_per_s"] = best.e2e_msgs_per_s
        report.figures[f"{key}_inject_msgs_per_s"] = best.inject_msgs_per_s
    return injected


def _latency(plan: Plan, latency_sink: LatencySink, target: str, report: Report) -> None:
    say(f"latency: {plan.latency_rate:g} msg/s for {plan.latency_seconds:g} s")
    host, port = bp.split_hostport(target)
    before = latency_sink.count
    sent, failed = asyncio.run(
        _latency_client((host, port), plan.latency_rate, plan.latency_seconds, 8, plan.size)
    )
    deadline = time.monotonic() + 30
    while latency_sink.count - before < sent - failed and time.monotonic() < deadline:
        time.sleep(0.1)
    samples = list(latency_sink.samples_ms)
    received = latency_sink.count - before
    summary = latency_summary(samples)
    report.figures["e2e_p50_ms"] = summary["p50"]
    report.figures["e2e_p99_ms"] = summary["p99"]
    report.figures["latency"] = {
        "rate_per_s": plan.latency_rate,
        "seconds": plan.latency_seconds,
        "sent": sent,
        "failed": failed,
        "received": received,
        "max_ms": summary["max"],
    }
    say(f"latency: p50 {summary['p50']} ms, p99 {summary['p99']} ms, max {summary['max']} ms")
    if failed or received < sent:
        raise RuntimeError(f"{failed} sends failed, {received}/{sent} received")


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
    return parser.parse_args(argv)


def run_bench(
    args: argparse.Namespace, plan: Plan, work: Path, report: Report, deadline: Deadline
) -> None:
    """Every stage in order; whatever was started is stopped (by pid) on the way out."""
    with ExitStack() as stack:
        sink = bp.SmtpSink(f"{SINK_IP}:{kafka_local.free_port(SINK_IP)}", work)
        try:
            sink.start()
        except Exception as exc:
            report.fail("smtp-sink", exc)
            return
        stack.callback(sink.stop)
        say(f"smtp-sink on {sink.listen} (pid {sink.pid})")
        sink_ceiling(plan, sink, report)
        targets: dict[str, str] = {}
        if not args.skip_postfix and (postfix := start_postfix(stack, plan, work, sink, report)):
            targets["postfix"] = postfix
        pipe = None if args.skip_ours else start_pipeline(stack, plan, work, sink, report)
        sink_base = sink.messages
        if pipe is not None and queue_stages(plan, sink, pipe, report):
            targets["ours"] = pipe.target
        accepted = pipe.accepted if pipe is not None else 0
        accepted += compare_end_to_end(plan, sink, targets, report, deadline)
        if "ours" in targets and pipe is not None:
            if deadline.spent:
                report.fail("latency", "time budget spent; skipped")
            else:
                try:
                    _latency(plan, pipe.latency_sink, pipe.target, report)
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
    print(json.dumps(figures, sort_keys=True), flush=True)
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
