"""The pure parts of the fault run (scripts/chaos.py, `make chaos`, tests/faults/): its
settings, the schedule of faults drawn from a seed, and the figures, table, verdict and JSON
made from what the injector and the MX counted. Standard library only.

Every message has one recipient of its own, so counts are sets of recipients: accepted (the
client got 250), refused (the client got a 4xx/5xx reply: a client would send it again),
unanswered (the connection broke before a reply: the client cannot know) and received (what the
MX got, with repeats). Like an MTA, the client sends a message answered 4xx again later, the same
bytes, up to `client_retries` times; its last answer counts, and retried says how many were sent
again. Lost is accepted minus received; duplicates are repeats of accepted recipients (retried
ones included: a copy written before its 451 and the client's second copy must reach the
recipient once); delivered after 451 are recipients refused for good that the MX got anyway;
delivered unanswered are reported apart (an ingest killed after Kafka acked but before it
answered: unavoidable, and no promise was broken).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

WORKER_KILL = "worker-kill"  # SIGKILL worker 0, restarted at once
WORKER_TERM = "worker-term"  # SIGTERM worker 1 (it drains), restarted
INGEST_KILL = "ingest-kill"  # SIGKILL ingest, restarted at once
BROKER_RESTART = "broker-restart"  # graceful broker stop, down for a while, started again
KINDS = (WORKER_KILL, WORKER_TERM, INGEST_KILL, BROKER_RESTART)
WINDOW = (0.1, 0.7)  # faults happen in this part of the injection, leaving time to recover
MAX_DUPLICATE_PCT = 0.5


@dataclass(frozen=True)
class Config:
    """One fault run. The defaults are `make chaos`'s (the issue's run); SUITE is the test's."""

    messages: int = 20_000
    rate: float = 70.0  # messages per second, all connections together
    connections: int = 8
    destinations: int = 50
    seed: int = 12
    worker_kills: int = 5
    broker_down_s: float = 20.0  # longer than publish_timeout_s: some answers are 451
    publish_timeout_s: float = 15.0
    stall_s: float = 60.0  # the workers' liveness bound (their /healthz)
    client_retries: int = 5  # times the client sends a message answered 4xx again
    client_retry_s: float = 15.0  # after this long, each time
    drain_budget_s: float = 300.0  # from the end of injection

    @property
    def inject_s(self) -> float:
        return self.messages / self.rate

    def validate(self) -> None:
        if self.messages < 1 or self.rate <= 0 or self.connections < 1 or self.destinations < 1:
            raise ValueError("messages, rate, connections and destinations must be positive")
        if self.worker_kills < 0 or self.broker_down_s < 0 or self.client_retries < 0:
            raise ValueError("worker_kills, broker_down_s and client_retries must not be negative")


# A few thousand messages under three minutes on two cores: shorter outages than make chaos,
# still past the publish timeout so that 451s happen. A worker SIGKILLed soon after it took
# over a backlog repeats up to one send per busy slot (a dozen here), so the run is long
# enough for that to stay a small share.
SUITE = Config(
    messages=3600,
    rate=40.0,
    connections=6,
    destinations=20,
    worker_kills=2,
    broker_down_s=7.0,
    publish_timeout_s=4.0,
    drain_budget_s=100.0,
    client_retry_s=4.0,
)


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the start of injection
    kind: str


def schedule(config: Config) -> list[Fault]:
    """The faults of a run, in time order: `worker_kills` SIGKILLs of worker 0 and one each of
    the other kinds, shuffled by the seed, one per equal slot of the WINDOW part of the
    injection, each at a seeded point of the first half of its slot (so two faults are at
    least half a slot apart)."""
    kinds = [WORKER_KILL] * config.worker_kills + [BROKER_RESTART, INGEST_KILL, WORKER_TERM]
    rng = random.Random(config.seed)
    rng.shuffle(kinds)
    start, end = (config.inject_s * edge for edge in WINDOW)
    slot = (end - start) / len(kinds)
    return [
        Fault(round(start + i * slot + rng.uniform(0, slot / 2), 2), kind)
        for i, kind in enumerate(kinds)
    ]


@dataclass
class Tally:
    """What the injector and the MX counted, by recipient."""

    sent_to: set[str] = field(default_factory=set)  # every recipient with an answer or none
    accepted: set[str] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)  # recipient -> SMTP code
    unanswered: set[str] = field(default_factory=set)
    retried: set[str] = field(default_factory=set)  # sent again after a 4xx
    received: Counter[str] = field(default_factory=Counter)

    def answered(self, address: str, verdict: str, code: int) -> None:
        """The latest answer for `address` (a retry's replaces the one before)."""
        self.sent_to.add(address)
        self.refused.pop(address, None)
        self.unanswered.discard(address)
        if verdict == "accepted":
            self.accepted.add(address)
        elif verdict == "refused":
            self.refused[address] = code
        else:
            self.unanswered.add(address)


@dataclass(frozen=True)
class Ending:
    """How the run ended, apart from the counts."""

    drain_s: float | None  # from the end of injection to all delivered and lag 0; None: never
    queue_lag: int | None  # None: could not be read
    liveness_restarts: int  # processes restarted because /healthz failed or they died
    faults: int  # faults made
    workers: int
    workers_back: int  # alive, ready, live and delivering since their last start


@dataclass(frozen=True)
class Figures:
    sent: int
    accepted: int
    refused: int
    unanswered: int
    delivered: int  # distinct accepted recipients the MX got
    lost: int
    duplicates: int
    delivered_after_451: int
    retried: int  # sent again by the client after a 4xx
    retried_duplicates: int  # extra copies the MX got of those
    delivered_unanswered: int
    unexpected: int  # received, never sent (must be 0: the count is broken otherwise)
    drain_s: float | None  # None: not drained within the budget
    queue_lag: int | None
    liveness_restarts: int
    faults: int
    workers: int
    workers_back: int

    @property
    def duplicate_pct(self) -> float:
        return round(100 * self.duplicates / self.accepted, 3) if self.accepted else 0.0


def figures(tally: Tally, ending: Ending) -> Figures:
    """The figures of a run from its tally."""
    received = tally.received
    delivered = sum(1 for r in tally.accepted if received[r] > 0)
    return Figures(
        sent=len(tally.sent_to),
        accepted=len(tally.accepted),
        refused=len(tally.refused),
        unanswered=len(tally.unanswered),
        delivered=delivered,
        lost=len(tally.accepted) - delivered,
        duplicates=sum(received[r] - 1 for r in tally.accepted if received[r] > 1),
        delivered_after_451=sum(1 for r in tally.refused if received[r] > 0),
        retried=len(tally.retried),
        retried_duplicates=sum(received[r] - 1 for r in tally.retried if received[r] > 1),
        delivered_unanswered=sum(1 for r in tally.unanswered if received[r] > 0),
        unexpected=sum(1 for r in received if r not in tally.sent_to),
        **asdict(ending),
    )


def problems(fig: Figures, *, max_duplicate_pct: float = MAX_DUPLICATE_PCT) -> list[str]:
    """What broke the run's promises (empty: none). Liveness restarts are reported, not failed:
    a restart by the liveness probe is the recovery Kubernetes would make, but the table says
    it happened."""
    found = []
    if fig.accepted == 0:
        found.append("nothing was accepted")
    if fig.lost:
        found.append(f"{fig.lost} accepted messages lost")
    if fig.duplicate_pct >= max_duplicate_pct:
        found.append(f"duplicates {fig.duplicate_pct}% of accepted (limit {max_duplicate_pct}%)")
    if fig.delivered_after_451:
        found.append(f"{fig.delivered_after_451} messages answered 4xx/5xx were delivered")
    if fig.unexpected:
        found.append(f"{fig.unexpected} deliveries to recipients never sent")
    if fig.drain_s is None:
        found.append("not drained within the budget")
    if fig.queue_lag is None or fig.queue_lag > 0:
        found.append(f"queue lag {fig.queue_lag} at the end")
    if fig.workers_back < fig.workers:
        found.append(f"only {fig.workers_back} of {fig.workers} workers back to work")
    return found


def table(fig: Figures, faults: list[str] | None = None) -> list[str]:
    """The printed table: one figure a line, aligned."""
    drain = "not drained" if fig.drain_s is None else f"{fig.drain_s:.1f} s"
    rows = [
        ("sent", str(fig.sent)),
        ("accepted (250)", str(fig.accepted)),
        ("refused (4xx/5xx)", str(fig.refused)),
        ("unanswered (connection lost)", str(fig.unanswered)),
        ("delivered", str(fig.delivered)),
        ("lost", str(fig.lost)),
        ("duplicates", f"{fig.duplicates} ({fig.duplicate_pct}% of accepted)"),
        ("delivered after 451", str(fig.delivered_after_451)),
        ("sent again after 4xx", str(fig.retried)),
        ("  of those, extra copies", str(fig.retried_duplicates)),
        ("delivered unanswered", str(fig.delivered_unanswered)),
        ("drain time", drain),
        ("queue lag at the end", "?" if fig.queue_lag is None else str(fig.queue_lag)),
        ("workers back to work", f"{fig.workers_back} of {fig.workers}"),
        ("liveness restarts", str(fig.liveness_restarts)),
        ("faults", f"{fig.faults}" + (f" ({', '.join(faults)})" if faults else "")),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {value}" for name, value in rows]


def result(fig: Figures, config: Config, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The last JSON line's object."""
    return {
        "stage": "chaos",
        **asdict(fig),
        "duplicate_pct": fig.duplicate_pct,
        "problems": problems(fig),
        "config": asdict(config),
        **(extra or {}),
    }


def recipient(number: int, run: str, destinations: int) -> str:
    """Message `number`'s one recipient: unique in the run, spread over the destinations."""
    return f"m{number}.{run}@d{number % destinations}.chaos.example"
