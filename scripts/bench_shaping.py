"""`make bench`, shaping: achieved vs configured rate per destination, and the worst burst.

The running pipeline, on 127.0.0.x, every process started here stopped by its pid:

- a throwaway Kafka broker (or `--bootstrap` to reuse one), a shaping policy limiting
  destination A and destination B to different rates with stated bursts, C unthrottled;
- `mailsluice delivery` worker processes, static routes sending each destination to its own
  aiosmtpd sink, which records when each message arrives and from which worker (its EHLO
  name; each worker binds its own source address unless the phase shares one);
- a queue pre-filled with more mail than the limits let through in the measured time, the three
  destinations interleaved (phase 1 puts them in one partition, so the free C shares it with
  the throttled A and B).

Phases: 1w-1p, one worker; 2w-4p, two workers sharing the pool's four partitions (the limit
must hold cluster-wide: one partition, hence one worker, owns a destination); 2w-rebal, the
same, and halfway the worker owning A is stopped, so the other takes A over (no burst at the
handover; its cost shows as a gap); 2w-rebal-learn, the handover of a destination whose rate
was learned: A adaptive, both workers sending from one source address as a pool's workers do,
the measurement starting once A's slow start has reached its ceiling (LEARN_S), so the new owner
must go on at the learned rate (restored from the control topic) instead of starting slowly
again. Per destination: configured and achieved rate over the steady window (from 5 s after its
first message, or LEARN_S in 2w-rebal-learn, to the end of the measurement), the error, the
most messages in any 1 s against what the limit allows there (burst + one second of rate), the
envelope excess (the most messages, over every window, beyond burst + rate * window: 0 when
GCRA holds exactly) and the longest gap between two messages. The figures come from
bench_shaping_figures. Progress and a table go to stdout, the last line is JSON;
the exit status is 1 when a stage failed (figures outside the limits are reported, not fatal).
Other MAILSLUICE_* variables in the environment reach the workers, e.g.
MAILSLUICE_DELIVERY_SHORT_HORIZON_S=120 keeps a throttled backlog in memory instead of sending
what waits longer than 5 s through a delay topic (whose round trip shows as gaps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kafka_local
from bench_ours import MAILSLUICE, Service
from bench_run import run_stage, say
from bench_shaping_figures import format_rows, measured
from bench_shaping_sink import StampSink
from bench_tools import tail

WORKER_IPS = ("127.0.0.31", "127.0.0.32")  # source addresses, one per worker unless shared
WORKERS = ("w1", "w2")  # their EHLO names begin with these: the sinks tell workers apart
WARMUP_S = 5.0  # the steady window starts this long after a destination's first message
# An adaptive A: slow start from 12/min doubles each 10 s window to its 600/min ceiling.
LEARN_S = 90.0
SETTLE_S = 8.0  # two workers: let the group settle before mail arrives
FREE_MESSAGES = 4000


@dataclass(frozen=True)
class Destination:
    name: str
    domain: str
    sink_ip: str
    rate_per_min: float | None  # None: unthrottled
    burst: int | None

    @property
    def rate_per_s(self) -> float | None:
        return None if self.rate_per_min is None else self.rate_per_min / 60

    def messages(self, seconds: float) -> int:
        """Enough to keep it busy past `seconds` (the free one drains at once)."""
        if self.rate_per_min is None:
            return FREE_MESSAGES
        return int(self.rate_per_min * (seconds + 15) / 60)


DESTINATIONS = (
    Destination("A", "a.shaping.example", "127.0.0.41", 600, 5),
    Destination("B", "b.shaping.example", "127.0.0.42", 150, 2),
    Destination("C", "c.shaping.example", "127.0.0.43", None, None),
)


def policy_text(learn: str = "") -> str:
    """The bench's shaping policy: generous defaults (C), a rule per limited destination, every
    rate used as configured (the stage measures the limiter, not what a controller learns),
    except for destination `learn`, whose rate is a ceiling its controller grows to."""
    lines = [
        "version = 1",
        "[defaults]",
        "adaptive = false",
        "connection_limit = 20",
        'max_message_rate = "100000/s"',
        "max_deliveries_per_connection = 1000",
        "max_recipients_per_transaction = 100",
        'tls = "disabled"',
    ]
    for dest in DESTINATIONS:
        if dest.rate_per_min is not None:
            lines += [
                f'[domain."{dest.domain}"]',
                f'max_message_rate = "{dest.rate_per_min:g}/min,burst={dest.burst}"',
            ]
            if dest.name == learn:
                lines.append("adaptive = true")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def phase_figures(
    stamps: dict[str, list[tuple[float, str]]], end: float, warmup_s: float = WARMUP_S
) -> dict[str, Any]:
    """Per destination name: shaping_bench.measured() over its arrivals up to `end` (from
    `warmup_s` after its first), and the share each worker delivered."""
    out: dict[str, Any] = {}
    for dest in DESTINATIONS:
        arrived = [(t, name) for t, name in stamps.get(dest.name, []) if t < end]
        times = [t for t, _ in arrived]
        start = (min(times) if times else end) + warmup_s
        row = measured(times, dest.rate_per_s, dest.burst, start=start, end=end)
        by_worker = Counter(name for _, name in arrived)
        row["by_worker"] = {name: by_worker[name] for name in WORKERS if by_worker[name]}
        out[dest.name] = row
    return out


# --------------------------------------------------------------------------- the pipeline


def worker_env(
    bootstrap: str,
    pool: str,
    partitions: int,
    *,
    policy: Path,
    routes: str,
    port: int,
    ip: str,
    name: str,
) -> dict[str, str]:
    return {
        **os.environ,
        "MAILSLUICE_KAFKA_BOOTSTRAP": bootstrap,
        "MAILSLUICE_KAFKA_QUEUE_PARTITIONS": str(partitions),
        "MAILSLUICE_LOG_JSON_FORMAT": "false",
        "MAILSLUICE_DELIVERY_POOL": pool,
        "MAILSLUICE_DELIVERY_HTTP_HOST": "127.0.0.1",
        "MAILSLUICE_DELIVERY_HTTP_PORT": str(port),
        "MAILSLUICE_SHAPING_POLICY_FILE": str(policy),
        "MAILSLUICE_SHAPING_WORKER_ID": f"bench-{name}",
        "MAILSLUICE_OUTBOUND_STATIC_ROUTES": routes,
        "MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES": ip,
        "MAILSLUICE_OUTBOUND_ALLOW_PRIVATE_DESTINATIONS": "true",
        "MAILSLUICE_OUTBOUND_TLS_POLICY": "none",
        "MAILSLUICE_OUTBOUND_EHLO_NAME": f"{name}.delivery.bench.invalid",
    }


async def prepare_queue(bootstrap: str, pool: str, partitions: int, seconds: float) -> int:
    """Create the pool's topics and enqueue the destinations' mail, interleaved."""
    from aiokafka import AIOKafkaProducer

    from mailsluice.contracts.envelope import ENVELOPE_HEADER, Envelope, encode_envelope
    from mailsluice.contracts.topics import queue_topic
    from mailsluice.kafka.admin import ensure_topics, standard_topics
    from mailsluice.kafka.settings import KafkaSettings

    ks = KafkaSettings(bootstrap=bootstrap, queue_partitions=partitions)
    await ensure_topics(ks, standard_topics(ks, [pool], 1024 * 1024))
    counts = {dest.domain: dest.messages(seconds) for dest in DESTINATIONS}
    producer = AIOKafkaProducer(**ks.client_options(), acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        futures = []
        for n in range(max(counts.values())):
            for domain, count in counts.items():
                if n >= count:
                    continue
                env = Envelope(
                    queue_id=f"{pool}-{domain[0]}{n:06d}",
                    pool=pool,
                    sender="bench@origin.example",
                    recipients=(f"r{n}@{domain}",),
                    routing_key=domain,
                    received_at=time.time(),
                )
                body = f"Subject: shaping {n}\r\nTo: <r{n}@{domain}>\r\n\r\nbench\r\n".encode()
                futures.append(
                    await producer.send(
                        queue_topic(pool),
                        body,
                        key=domain.encode(),
                        headers=[(ENVELOPE_HEADER, encode_envelope(env))],
                    )
                )
                sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


@dataclass(frozen=True)
class Phase:
    label: str
    workers: int
    partitions: int
    rebalance: bool = False  # halfway, stop the worker that owns A: the other takes it over
    learn: bool = False  # A adaptive, one source address for all, measured after LEARN_S

    @property
    def lead_in(self) -> float:
        """Seconds from A's first message to the start of the measured time."""
        return LEARN_S if self.learn else 0.0


PHASES = (
    Phase("1w-1p", 1, 1),
    Phase("2w-4p", 2, 4),
    Phase("2w-rebal", 2, 4, rebalance=True),
    Phase("2w-rebal-learn", 2, 4, rebalance=True, learn=True),
)


def start_workers(
    stack: ExitStack, phase: Phase, *, pool: str, routes: str, bootstrap: str, work: Path
) -> dict[str, Service]:
    """The phase's delivery processes, ready, by worker name; stopped by pid on exit."""
    policy = work / f"policy-{phase.label}.toml"
    policy.write_text(policy_text("A" if phase.learn else ""))
    services = {}
    for n, name in enumerate(WORKERS[: phase.workers]):
        port = kafka_local.free_port()
        ip = WORKER_IPS[0 if phase.learn else n]
        env = worker_env(
            bootstrap,
            pool,
            phase.partitions,
            policy=policy,
            routes=routes,
            port=port,
            ip=ip,
            name=name,
        )
        service = Service(f"{phase.label}-{name}", ["delivery"], env, work)
        stack.callback(service.stop)
        service.start(f"http://127.0.0.1:{port}/readyz")
        say(f"{phase.label}: worker {name} ready (pid {service.pid}, source {ip})")
        services[name] = service
    if phase.workers > 1:
        time.sleep(SETTLE_S)
    return services


def run_phase(
    phase: Phase, *, bootstrap: str, sinks: dict[str, StampSink], work: Path, seconds: float
) -> dict[str, Any]:
    """One pool, the phase's delivery processes, the queue filled once they are up; the
    figures of the `seconds` after A's first message."""
    label = phase.label
    pool = f"shape{os.urandom(4).hex()}"
    routes = ",".join(
        f"{dest.domain}={sinks[dest.name].host}:{sinks[dest.name].port}" for dest in DESTINATIONS
    )
    base = {name: len(sink.snapshot()) for name, sink in sinks.items()}
    figures: dict[str, Any] = {"workers": phase.workers, "partitions": phase.partitions}
    with ExitStack() as stack:
        services = start_workers(
            stack, phase, pool=pool, routes=routes, bootstrap=bootstrap, work=work
        )
        queued = asyncio.run(
            prepare_queue(bootstrap, pool, phase.partitions, phase.lead_in + seconds)
        )
        say(f"{label}: {queued} messages queued in pool {pool} ({phase.partitions} partition(s))")
        first = wait_first(sinks["A"], base["A"], 60.0)
        end = first + phase.lead_in + seconds
        handover = first + phase.lead_in + seconds / 2 if phase.rebalance else None
        while time.monotonic() < end:
            if handover is not None and time.monotonic() >= handover:
                owner = sinks["A"].snapshot()[-1][1]
                say(f"{label}: stopping A's owner ({owner}, pid {services[owner].pid})")
                services.pop(owner).stop()
                figures["stopped_at_s"] = round(time.monotonic() - first, 1)
                handover = None
            for service in services.values():
                if service.proc is not None and service.proc.poll() is not None:
                    raise RuntimeError(f"{service.name} exited: {tail(service.log_path, 10)}")
            time.sleep(0.5)
        stamps = {name: sink.snapshot()[base[name] :] for name, sink in sinks.items()}
        figures["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        say(f"{label}: measured {seconds:g} s; stopping the worker(s)")
    # Arrival times (from A's first message) and source, for a look behind the figures.
    raw = {n: [(round(t - first, 4), ip) for t, ip in v] for n, v in stamps.items()}
    (work / f"arrivals-{label}.json").write_text(json.dumps(raw))
    figures["destinations"] = phase_figures(stamps, end, phase.lead_in or WARMUP_S)
    return figures


def wait_first(sink: StampSink, base: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = sink.snapshot()
        if len(stamps) > base:
            return stamps[base][0]
        time.sleep(0.05)
    raise RuntimeError(f"no message reached destination A's sink within {timeout:g} s")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time per phase")
    parser.add_argument("--bootstrap", help="reuse this Kafka broker (default: a throwaway one)")
    parser.add_argument(
        "--phases",
        default=",".join(p.label for p in PHASES),
        help="comma-separated phases to run (default: all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    with ExitStack() as stack:
        bootstrap = args.bootstrap
        if not bootstrap:
            kafka_dir = work / "kafka"
            port = kafka_local.free_port()
            say(f"kafka: starting a broker on 127.0.0.1:{port}")
            stack.callback(kafka_local.stop, kafka_dir)
            bootstrap = kafka_local.start(kafka_dir, port=port).bootstrap
        sinks = {}
        for dest in DESTINATIONS:
            sink = StampSink(dest.sink_ip, kafka_local.free_port(dest.sink_ip))
            sink.start()
            stack.callback(sink.stop)
            sinks[dest.name] = sink
        say("sinks: " + ", ".join(f"{d.name}={d.domain}@{d.sink_ip}" for d in DESTINATIONS))
        for phase in PHASES:
            if phase.label not in args.phases.split(","):
                continue
            try:
                figures = run_phase(
                    phase, bootstrap=bootstrap, sinks=sinks, work=work, seconds=args.seconds
                )
            except Exception as exc:
                result["errors"].append(f"{phase.label}: {exc}")
                say(f"FAILED {phase.label}: {exc}")
                continue
            result["shaping"][phase.label] = figures
            for line in format_rows(phase.label, figures["destinations"]):
                print(line, flush=True)
        say("stopping everything")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not MAILSLUICE.exists():
        say(f"FAILED: {MAILSLUICE} missing (run make setup)")
        return 1
    result: dict[str, Any] = {
        "shaping": {},
        "destinations": {
            d.name: {"domain": d.domain, "rate_per_min": d.rate_per_min, "burst": d.burst}
            for d in DESTINATIONS
        },
        "measured_s": args.seconds,
        "worker_env": {k: v for k, v in os.environ.items() if k.startswith("MAILSLUICE_")},
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "errors": [],
    }
    run_stage(
        "mailsluice-bench-shaping-",
        args.keep,
        result["errors"],
        lambda work: run(args, work, result),
        "bench",
    )
    print(json.dumps(result, sort_keys=True), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
