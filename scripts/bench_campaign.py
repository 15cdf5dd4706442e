"""`make bench`, campaign: deliverability of one campaign into providers with unknown limits.

The real pipeline on 127.0.0.x, every process started here stopped by its pid: a throwaway
Kafka broker, `mailsluice ingest`, and one `mailsluice delivery --pool default` worker with the
shipped shaping policy and reply rules (nothing tells it the providers' limits). Its static
routes send each recipient domain to its own server of the provider simulator
(tests/support/provider_sim.py: per-source-IP token buckets, connection and per-connection
caps, the providers' own deferral texts, penalty blocks of several minutes for a sender that
keeps sending after deferrals; each offers STARTTLS with a self-signed certificate). The pool
sends from the `--sources` addresses (only the first when the installed code has the
single-address setting; the output says so).

A campaign of `--recipients` messages, one recipient each (40% gmail.com, 20% yahoo.com, 20%
outlook.com, 10% each to two small ISPs), is injected into ingest over several SMTP sessions at
once; the stage then waits, in real time, until every recipient is delivered or bounced or the
budget is spent. The limits (bench_campaign_plan.DESTINATIONS) let a sender that knew them
finish 3,000 recipients in about 10 minutes from one address.

Printed per provider and overall: delivered, bounced, the ideal span at the simulator's limits
for the source addresses used, the actual span, efficiency (ideal / actual), deferrals as % of
attempts, penalty blocks and refused greetings/MAIL commands; then the targets (overall
efficiency >= 0.85, zero blocks, deferrals < 2%), and last one JSON object. Figures are
reported, not asserted: the exit status is 1 only when the stage could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import bench_campaign_plan as plan  # first: puts tests/ on sys.path for support.*
import kafka_local
from bench_ours import MAILSLUICE, Service, create_topics, plumbing_env
from bench_run import say
from bench_tools import new_result, tail

INGEST_IP = "127.0.0.50"
DNS_IP = "127.0.0.59"
SENDER = "campaign@bench.example"
SESSIONS = 8  # concurrent injection sessions: ingest is not what limits
RECONNECT_AFTER = 500  # messages per injection session (ingest closes at 1000)
INJECT_TRIES = 5
PROGRESS_S = 30.0
LATENCY_S = 0.02  # each simulated server's processing time at the end of DATA


@dataclass
class Campaign:
    """What was planned and what has happened to it so far."""

    planned: dict[str, int]  # per destination
    owner: dict[str, str]  # address -> destination name
    bounced: dict[str, str] = field(default_factory=dict)  # address -> destination name
    injected: int = 0
    inject_s: float | None = None

    def done(self, delivered: set[str]) -> Counter[str]:
        """Distinct recipients delivered or bounced, per destination."""
        finished = (delivered & self.owner.keys()) | self.bounced.keys()
        return Counter(self.owner[address] for address in finished)


# --------------------------------------------------------------------------- the pipeline


def pipeline_env(
    bootstrap: str, nameserver: str, ports: dict[str, int], routes: str, source: tuple[str, str]
) -> dict[str, str]:
    """Ingest's and delivery's settings: bench plumbing only, the shipped policy untouched."""
    return {
        # nothing is looked up off the machine
        **plumbing_env(bootstrap, nameserver, ports, INGEST_IP),
        "MAILSLUICE_DELIVERY_BOUNCES_ENABLED": "false",  # the bench sender has no mailbox
        "MAILSLUICE_OUTBOUND_STATIC_ROUTES": routes,
        "MAILSLUICE_OUTBOUND_ALLOW_PRIVATE_DESTINATIONS": "true",
        "MAILSLUICE_OUTBOUND_EHLO_NAME": "delivery.bench.invalid",
        source[0]: source[1],
    }


def start_dns(stack: ExitStack) -> str:
    """An empty local DNS zone: any lookup the pipeline still makes stays on the machine."""
    from support.dns_server import DnsServer

    server = DnsServer(DNS_IP, 0)
    server.start()
    stack.callback(server.stop)
    return str(server.nameserver)


def start_simulator(stack: ExitStack, work: Path) -> Any:
    from support.provider_sim import ProviderSim, ProviderSpec
    from support.tls import server_context

    specs = [
        ProviderSpec(
            dest.name,
            dest.limits(),
            kind=dest.kind,
            host=dest.host,
            latency_s=LATENCY_S,
            tls_context=server_context(work, f"mx.{dest.name}.test"),
        )
        for dest in plan.DESTINATIONS
    ]
    sim = ProviderSim(specs)
    sim.start()
    stack.callback(sim.stop)
    for server in sim.servers.values():
        say(f"simulator: {server.name} on {server.address}")
    return sim


def start_service(
    stack: ExitStack, name: str, argv: list[str], env: dict[str, str], *, work: Path, port: int
) -> Service:
    service = Service(name, argv, env, work)
    stack.callback(service.stop)
    service.start(f"http://127.0.0.1:{port}/readyz")
    say(f"{name}: ready (pid {service.pid})")
    return service


# --------------------------------------------------------------------------- the campaign


def message(number: int, address: str, run: str) -> bytes:
    return (
        f"From: Bench <{SENDER}>\r\nTo: <{address}>\r\nSubject: Campaign {number}\r\n"
        f"Date: {formatdate(localtime=True)}\r\nMessage-ID: <c{number}.{run}@bench.example>\r\n"
        f"\r\nHello {address}, this is message {number} of the campaign.\r\n"
    ).encode()


async def inject(host: str, port: int, recipients: list[tuple[str, str]]) -> float:
    """Every recipient into ingest, one message each, over SESSIONS sessions; seconds taken."""
    import aiosmtplib

    run = os.urandom(4).hex()
    todo: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for number, (_, address) in enumerate(recipients):
        todo.put_nowait((number, address))

    async def session() -> None:
        smtp: aiosmtplib.SMTP | None = None
        sent = 0
        while not todo.empty():
            number, address = todo.get_nowait()
            for attempt in range(INJECT_TRIES):
                try:
                    if smtp is None or not smtp.is_connected or sent >= RECONNECT_AFTER:
                        if smtp is not None and smtp.is_connected:
                            await smtp.quit()
                        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
                        await smtp.connect(timeout=30)
                        sent = 0
                    await smtp.sendmail(SENDER, [address], message(number, address, run))
                    sent += 1
                    break
                except (aiosmtplib.SMTPException, OSError) as exc:
                    if attempt == INJECT_TRIES - 1:
                        raise RuntimeError(f"ingest refused {address}: {exc}") from exc
                    smtp = None
                    await asyncio.sleep(0.5)  # ingest busy or the connection dropped
        if smtp is not None and smtp.is_connected:
            await smtp.quit()

    started = time.monotonic()
    await asyncio.gather(*(session() for _ in range(SESSIONS)))
    return time.monotonic() - started


async def watch_bounces(bootstrap: str, campaign: Campaign, stop: asyncio.Event) -> None:
    """Bounced and expired recipients of the campaign, from mailsluice.events."""
    from aiokafka import AIOKafkaConsumer

    from mailsluice.contracts.events import EventType, decode_event
    from mailsluice.contracts.topics import EVENTS_TOPIC
    from mailsluice.kafka.settings import KafkaSettings

    final = {EventType.BOUNCE, EventType.EXPIRATION}
    consumer = AIOKafkaConsumer(
        EVENTS_TOPIC,
        **KafkaSettings(bootstrap=bootstrap).client_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    event = decode_event(record.value)
                    owner = campaign.owner.get(event.recipient.lower())
                    if event.type in final and owner is not None:
                        campaign.bounced[event.recipient.lower()] = owner
    finally:
        await consumer.stop()


def delivered(sim: Any) -> set[str]:
    return {accepted.recipient.lower() for accepted in sim.accepted}


def progress(sim: Any, campaign: Campaign, started: float) -> str:
    done = campaign.done(delivered(sim))
    rows = {row.provider: row for row in sim.summary()}
    parts = [
        f"{name} {done[name]}/{count} (blocks {rows[name].blocks}, "
        f"deferred {rows[name].deferred}/{rows[name].attempts})"
        for name, count in campaign.planned.items()
    ]
    return f"+{time.monotonic() - started:.0f} s: " + "; ".join(parts)


async def run_campaign(
    sim: Any,
    *,
    bootstrap: str,
    target: tuple[str, int],
    recipients: list[tuple[str, str]],
    budget_s: float,
    services: list[Service],
) -> tuple[Campaign, bool]:
    """Inject the campaign, then wait until it is all delivered or bounced, or the budget is
    spent (from the start of injection); (the campaign, whether it finished)."""
    campaign = Campaign(
        planned=plan.split(len(recipients)),
        owner={address: name for name, address in recipients},
    )
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_bounces(bootstrap, campaign, stop))
    started = time.monotonic()
    deadline = started + budget_s
    try:
        campaign.inject_s = await inject(*target, recipients)
        campaign.injected = len(recipients)
        say(f"campaign: {len(recipients)} messages injected in {campaign.inject_s:.1f} s")
        next_progress = started + PROGRESS_S
        while time.monotonic() < deadline:
            if sum(campaign.done(delivered(sim)).values()) >= len(recipients):
                return campaign, True
            for service in services:
                if service.proc is not None and service.proc.poll() is not None:
                    raise RuntimeError(f"{service.name} exited: {tail(service.log_path, 10)}")
            if watcher.done():
                watcher.result()  # raises what stopped it
                raise RuntimeError("the events watcher stopped")
            if time.monotonic() >= next_progress:
                say(progress(sim, campaign, started))
                next_progress += PROGRESS_S
            await asyncio.sleep(1.0)
        say(f"campaign: budget of {budget_s:g} s spent")
        return campaign, False
    finally:
        stop.set()
        await asyncio.gather(watcher, return_exceptions=True)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 recipients, 10-minute budget")
    parser.add_argument("--recipients", type=int, help="default 3000 (--quick: 600)")
    parser.add_argument("--budget-s", type=float, help="default 2700 (--quick: 600)")
    parser.add_argument(
        "--sources",
        default=",".join(plan.DEFAULT_SOURCES),
        help="the pool's source addresses, comma-separated",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    preset = plan.QUICK if args.quick else plan.FULL
    args.recipients = args.recipients or preset.recipients
    args.budget_s = args.budget_s or preset.budget_s
    args.sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    if not args.sources or args.recipients < plan.MIN_RECIPIENTS:
        parser.error(f"need a source address and at least {plan.MIN_RECIPIENTS} recipients")
    return args


def run(args: argparse.Namespace, work: Path, result: dict[str, Any]) -> None:
    from mailsluice.delivery.transport.settings import OutboundSettings

    setting, value, used = plan.source_setting(OutboundSettings.model_fields, args.sources)
    result.update(source_setting=setting, sources_used=used)
    if used < len(args.sources):
        say(f"sources: the installed code reads {setting} only: sending from {value} alone")
    recipients = plan.recipients(args.recipients)
    with ExitStack() as stack:
        ports = {
            "ingest_smtp": kafka_local.free_port(INGEST_IP),
            "ingest_http": kafka_local.free_port(),
            "delivery_http": kafka_local.free_port(),
        }
        kafka_dir, kafka_port = work / "kafka", kafka_local.free_port()
        say(f"kafka: starting a broker on 127.0.0.1:{kafka_port}")
        stack.callback(kafka_local.stop, kafka_dir)
        bootstrap = kafka_local.start(kafka_dir, port=kafka_port).bootstrap
        sim = start_simulator(stack, work)
        routes = sim.routes({d.domain: d.name for d in plan.DESTINATIONS})
        env = pipeline_env(bootstrap, start_dns(stack), ports, routes, (setting, value))
        create_topics(env)
        delivery = ["delivery", "--pool", "default"]
        services = [
            start_service(stack, "ingest", ["ingest"], env, work=work, port=ports["ingest_http"]),
            start_service(stack, "delivery", delivery, env, work=work, port=ports["delivery_http"]),
        ]
        say(f"campaign: {args.recipients} recipients {plan.split(args.recipients)}")
        campaign, finished = asyncio.run(
            run_campaign(
                sim,
                bootstrap=bootstrap,
                target=(INGEST_IP, ports["ingest_smtp"]),
                recipients=recipients,
                budget_s=args.budget_s,
                services=services,
            )
        )
        report(sim, campaign, result, finished=finished, sources=used)
        report_delay_records(ports["delivery_http"], args.recipients, result)
        say("stopping everything")


def report(
    sim: Any, campaign: Campaign, result: dict[str, Any], *, finished: bool, sources: int
) -> None:
    """The table and the figures of the JSON line, as things stand now."""
    stopped_at = sim.clock()
    first_at: dict[str, float] = {}
    for accepted in sim.accepted:
        first_at.setdefault(accepted.provider, accepted.at)
    bounced = Counter(campaign.bounced.values())
    outcome = plan.Outcome(
        planned=campaign.planned,
        done=campaign.done(delivered(sim)),
        bounced=bounced,
        first_at=first_at,
        stopped_at=stopped_at,
        sources=sources,
    )
    rows = plan.figures(sim.summary(sources=sources), outcome)
    print(
        f"campaign: {sum(campaign.planned.values())} recipients, {sources} source address(es), "
        f"{'finished' if finished else 'budget spent'}",
        flush=True,
    )
    for line in plan.table(rows):
        print(line, flush=True)
    result.update(
        plan.result(
            rows,
            finished=finished,
            injected=campaign.injected,
            inject_s=None if campaign.inject_s is None else round(campaign.inject_s, 1),
        )
    )


def report_delay_records(port: int, messages: int, result: dict[str, Any]) -> None:
    """How often mail went through the retry delay topics, from the worker's metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        records = plan.delay_records(answer.read().decode())
    total = sum(records.values())
    print(
        f"delay topics: {total:.0f} records for {messages} messages "
        f"({total / max(1, messages):.2f} per message; by cause {records})",
        flush=True,
    )
    result["delay_records"] = {cause: int(n) for cause, n in sorted(records.items())}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = new_result(
        "campaign", recipients=args.recipients, budget_s=args.budget_s, sources=args.sources
    )
    if not MAILSLUICE.exists():
        result["errors"].append(f"{MAILSLUICE} missing (run make setup)")
    work = Path(tempfile.mkdtemp(prefix="mailsluice-bench-campaign-"))
    say(f"work dir {work}")
    signal.signal(signal.SIGTERM, _interrupt)  # unwind through the stops (by pid)
    started = time.monotonic()
    try:
        if not result["errors"]:
            run(args, work, result)
    except KeyboardInterrupt:
        result["errors"].append("interrupted")
    except Exception as exc:
        result["errors"].append(f"campaign: {exc}")
        say(f"FAILED {exc}")
    finally:
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.keep or result["errors"]:
            say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
