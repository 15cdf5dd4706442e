"""Our side of `make bench`: a throwaway Kafka, `mailsluice ingest` and `mailsluice delivery
--pool default` routed to smtp-sink, a local DNS server for the bench domains, and the queue
stages (ingest into a queue nobody drains, then a delivery worker draining it).

Every process started here is registered on the caller's ExitStack and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import bench_cpu
import kafka_local
from bench_latency import LATENCY_DOMAIN, LatencySink
from bench_run import Plan, Report, say
from bench_smtp import SmtpSink, Workload, run_source, source_command
from bench_tools import peak_rss_mb, rate, split_hostport, stop_pid, tail

ROOT = Path(__file__).resolve().parents[1]
MAILSLUICE = ROOT / ".venv" / "bin" / "mailsluice"
INGEST_IP = "127.0.0.22"
LATENCY_SINK_IP = "127.0.0.23"
DNS_IP = "127.0.0.24"


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
        self.spawn()
        self.wait_ready(ready_url, timeout)

    def spawn(self) -> None:
        """Start the process without waiting (several start side by side; see wait_ready)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(MAILSLUICE), *self.argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops us by pid
            )

    def wait_ready(self, ready_url: str, timeout: float = 60.0) -> None:
        """Poll ready_url until it answers 200; RuntimeError if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready(ready_url):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s at {ready_url}")

    def ready(self, ready_url: str) -> bool:
        """Whether ready_url answers 200 now; RuntimeError if the process has exited."""
        assert self.proc is not None, "spawn() first"
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited {self.proc.returncode}: {tail(self.log_path, 15)}"
            )
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid) if self.proc and self.proc.poll() is None else None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout)


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
        server.set_a(f"mx.{domain}", [split_hostport(hostport)[0]], ttl=3600)
    return str(server.nameserver)


def plumbing_env(
    bootstrap: str, nameserver: str, ports: dict[str, int], ingest_ip: str = INGEST_IP
) -> dict[str, str]:
    """What every bench's ingest and delivery need: the bench broker and DNS, their ports, no
    greet pause and no recipient-domain DNS checks (the Postfix peer has neither; the bench
    domains are static routes)."""
    return {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",  # as the image sets it (Dockerfile)
        "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "MAILSLUICE_DNS_NAMESERVERS": nameserver,
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
        "MAILSLUICE_INGEST_LISTEN_HOST": ingest_ip,
        "MAILSLUICE_INGEST_LISTEN_PORT": str(ports["ingest_smtp"]),
        "MAILSLUICE_INGEST_HTTP_HOST": "127.0.0.1",
        "MAILSLUICE_INGEST_HTTP_PORT": str(ports["ingest_http"]),
        "MAILSLUICE_INGEST_HOSTNAME": "ingest.bench.invalid",
        "MAILSLUICE_INGEST_GREET_PAUSE_S": "0",
        "MAILSLUICE_INGEST_VERIFY_DOMAINS": "false",
        "MAILSLUICE_DELIVERY_HTTP_HOST": "127.0.0.1",
        "MAILSLUICE_DELIVERY_HTTP_PORT": str(ports["delivery_http"]),
    }


def service_env(
    bootstrap: str,
    nameserver: str,
    ports: dict[str, int],
    sink: str,
    plan: Plan,
    *,
    ingest_ip: str = INGEST_IP,
) -> dict[str, str]:
    return {
        **plumbing_env(bootstrap, nameserver, ports, ingest_ip),
        # Same per-destination concurrency as the Postfix peer; no rate cap.
        "MAILSLUICE_DELIVERY_DEST_MAX_CONCURRENCY": str(plan.concurrency),
        "MAILSLUICE_DELIVERY_DEST_MAX_RATE": "1000000",
        "MAILSLUICE_DELIVERY_DEST_BURST": "100000",
        # Postfix neither learns a destination's rate nor caps its connection rate: the bench
        # destinations are a relay of one's own (adaptive off), on the same terms for both.
        "MAILSLUICE_SHAPING_POOL_OVERRIDES": json.dumps(
            {
                "defaults": {
                    "adaptive": False,
                    "connection_limit": plan.concurrency,
                    "max_connection_rate": "100000/s",
                }
            }
        ),
        "MAILSLUICE_OUTBOUND_STATIC_ROUTES": (
            f"{LATENCY_DOMAIN}={LATENCY_SINK_IP}:{ports['latency_sink']},*={sink}"
        ),
        "MAILSLUICE_OUTBOUND_ALLOW_PRIVATE_DESTINATIONS": "true",
        "MAILSLUICE_OUTBOUND_TLS_POLICY": "none",
        "MAILSLUICE_OUTBOUND_EHLO_NAME": "delivery.bench.invalid",
    }


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

    @property
    def kafka_pids(self) -> list[int]:
        pid = kafka_local.running_pid(self.kafka_dir)
        return [pid] if pid else []

    def pids(self) -> dict[str, int]:
        """Our services by name, those running."""
        return {s.name: s.pid for s in (self.ingest, self.delivery) if s.pid is not None}

    def cpu_groups(self) -> dict[str, list[int]]:
        """What counts as ours (ingest and delivery) and the broker, for bench_cpu."""
        ours = [s.pid for s in (self.ingest, self.delivery) if s.pid is not None]
        return {"ours": ours, "broker": self.kafka_pids}


def _free_ports() -> dict[str, int]:
    return {
        "kafka": kafka_local.free_port(),
        "ingest_smtp": kafka_local.free_port(INGEST_IP),
        "ingest_http": kafka_local.free_port(),
        "delivery_http": kafka_local.free_port(),
        "latency_sink": kafka_local.free_port(LATENCY_SINK_IP),
    }


def start_broker(stack: ExitStack, work: Path, overrides: dict[str, str] | None = None) -> str:
    """A throwaway single broker under work/kafka, stopped when `stack` closes; its bootstrap.
    `overrides`: server properties for this bench (kafka_config.server_properties)."""
    kafka_dir, kafka_port = work / "kafka", kafka_local.free_port()
    say(f"kafka: starting a broker on 127.0.0.1:{kafka_port}")
    stack.callback(kafka_local.stop, kafka_dir)
    return kafka_local.start(kafka_dir, port=kafka_port, overrides=overrides).bootstrap


def create_topics(env: dict[str, str], pools: tuple[str, ...] = ()) -> None:
    """`mailsluice topics create [--pool P ...]` on the bench broker (no pool: the default
    one); RuntimeError with its output on failure."""
    topics = subprocess.run(
        [str(MAILSLUICE), "topics", "create", *(a for p in pools for a in ("--pool", p))],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
    )
    if topics.returncode != 0:
        raise RuntimeError(f"topics create: {topics.stderr.strip() or topics.stdout.strip()}")


def _create_topics(env: dict[str, str], report: Report) -> bool:
    """create_topics, with a failure reported; False then."""
    try:
        create_topics(env)
    except RuntimeError as exc:
        report.fail("topics", str(exc).removeprefix("topics create: "))
        return False
    return True


def start_pipeline(
    stack: ExitStack, plan: Plan, work: Path, sink: SmtpSink, report: Report
) -> Pipeline | None:
    """Kafka, topics, DNS, latency sink and ingest (delivery starts later, on a full queue).

    Everything started is registered on `stack` to be stopped by pid; None after a failure.
    """
    if not MAILSLUICE.exists():
        report.fail("mailsluice", f"{MAILSLUICE} missing (run make setup)")
        return None
    kafka_dir = work / "kafka"
    ports = _free_ports()
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
    if not _create_topics(env, report):
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


def queue_stages(plan: Plan, sink: SmtpSink, pipe: Pipeline, report: Report) -> bool:
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
    rss["kafka"] = peak_rss_mb(kafka_pid) if kafka_pid else None
    report.figures["peak_rss_mb_by_process"] = rss
    report.figures["kafka_peak_rss_mb"] = rss["kafka"]
    say(f"memory: peak RSS MB {rss}")
    for service in (pipe.ingest, pipe.delivery):
        if service.proc is not None and service.proc.poll() is not None:
            report.fail(service.name, f"exited early ({service.proc.returncode})")


def _ingest(plan: Plan, pipe: Pipeline, report: Report) -> None:
    """smtp-source into ingest with no delivery worker: a 250 is a record Kafka acked.

    A warm-up, then plan.rounds runs, the best counting (a fresh JVM broker is slow at
    first, and other work on the machine only slows a run down).
    """
    say(f"ingest: {plan.messages} messages per round, no delivery worker running")
    runs: list[tuple[str, Workload]] = [("warm-up", plan.warmup())]
    runs += [(f"round {n}/{plan.rounds}", plan.workload()) for n in range(1, plan.rounds + 1)]
    rates: list[float | None] = []
    cpu: list[dict[str, float | None]] = []
    assert pipe.ingest.pid is not None
    groups = {"ingest": [pipe.ingest.pid], "broker": pipe.kafka_pids}
    for index, (label, work) in enumerate(runs):
        meter = bench_cpu.Meter(groups).start()
        run = run_source(source_command(pipe.target, work), 120)
        cpu.append(meter.stop(run.completed))
        pipe.queued += run.completed
        pipe.accepted += run.completed
        if run.returncode != 0 or run.completed < work.count:
            raise RuntimeError(
                f"smtp-source into ingest ({label}): exit {run.returncode}, "
                f"{run.completed}/{work.count} accepted: {run.stderr[-300:]}\n"
                f"{tail(pipe.ingest.log_path, 10)}"
            )
        if index > 0:
            rates.append(rate(work.count, run.seconds))
            say(
                f"ingest: {label}, {rates[-1]} msg/s accepted ({run.seconds:.2f} s), "
                f"{_cpu_text(cpu[-1], 'ingest')}"
            )
    report.figures["ingest_msgs_per_s"] = max(r or 0.0 for r in rates) or None
    report.figures["ingest_runs_msgs_per_s"] = rates
    # CPU: the median of the measured rounds (the warm-up apart, as for throughput).
    _cpu_figures(report, "ingest", cpu[1:])


def _cpu_text(cpu: dict[str, float | None], stage: str) -> str:
    own = bench_cpu.describe(cpu.get(stage), stage)
    return f"{own}, {bench_cpu.describe(cpu.get('broker'), 'broker')}"


def _cpu_figures(report: Report, stage: str, runs: list[dict[str, float | None]]) -> None:
    """{stage}_cpu_ms_per_msg and broker_cpu_ms_per_msg_{stage}, median and per round."""
    names = {stage: f"{stage}_cpu_ms_per_msg", "broker": f"broker_cpu_ms_per_msg_{stage}"}
    for group, name in names.items():
        values = [r.get(group) for r in runs]
        report.figures[f"{name}_runs"] = values
        report.figures[name] = bench_cpu.median(values)


def _delivery(sink: SmtpSink, pipe: Pipeline, report: Report) -> None:
    """Start the worker on the queue the ingest stage filled; time the drain at the sink."""
    base = sink.messages
    queued, pipe.queued = pipe.queued, 0
    say(f"delivery: starting a worker on the pre-filled queue ({queued} messages)")
    pipe.delivery.start(f"http://127.0.0.1:{pipe.ports['delivery_http']}/readyz")
    assert pipe.delivery.pid is not None
    # From readiness: the start-up (imports, group join) is not CPU per message.
    meter = bench_cpu.Meter({"delivery": [pipe.delivery.pid], "broker": pipe.kafka_pids})
    meter.start()
    say(f"delivery: ready (pid {pipe.delivery.pid})")
    if queued < 2:
        raise RuntimeError("no pre-filled queue to drain (the ingest stage failed)")
    first = sink.wait_for(base + 1, 30)
    last = sink.wait_for(base + queued, 120) if first is not None else None
    cpu = meter.stop(queued)
    if first is None or last is None:
        got = sink.messages - base
        raise RuntimeError(
            f"only {got}/{queued} reached the sink\n{tail(pipe.delivery.log_path, 10)}"
        )
    # Timed from the first message at the sink: group join and start-up are not throughput.
    report.figures["delivery_msgs_per_s"] = rate(queued - 1, last - first)
    _cpu_figures(report, "delivery", [cpu])
    say(
        f"delivery: {report.figures['delivery_msgs_per_s']} msg/s drained "
        f"({last - first:.2f} s), {_cpu_text(cpu, 'delivery')}"
    )
