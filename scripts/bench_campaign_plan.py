"""The pure parts of `make bench`'s campaign stage (scripts/bench_campaign.py): the campaign
(recipients per provider, the simulator's limits), which outbound source setting the installed
code reads, and the figures, table and JSON made from the simulator's summary rows.

The limits are the simulator's, never the policy's: a sender that knew them would finish the
default 3,000 recipients in about 10 minutes from one source address (the slowest provider,
isp-two, sets that). Efficiency is the ideal span at those limits over the actual one; a
provider that did not finish within the budget is judged on all its planned mail over the time
from its first delivery to the stop, an upper bound (printed with "<=").
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

# The provider model lives in the test support code (tests/support/), shared with the tests.
TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from support.provider_model import PROVIDERS, ProviderLimits, ProviderModel  # noqa: E402

TARGET_EFFICIENCY = 0.85
TARGET_BLOCKS = 0
TARGET_DEFERRAL_PCT = 2.0
DEFAULT_SOURCES = ("127.0.0.41", "127.0.0.42")
MIN_RECIPIENTS = 10  # one for each of the smallest shares
SEED = 11  # the order recipients are injected in: providers interleaved, the same every run


@dataclass(frozen=True)
class Destination:
    """One provider of the campaign: its recipients' domain, share and simulator limits."""

    name: str  # the simulator server's name, in the table
    kind: str  # its texts: a key of PROVIDERS (variant 0: no bounce texts)
    domain: str
    share: float  # of the campaign's recipients
    host: str  # the simulator server's address
    rate_per_min: float
    burst: int
    connections: int
    per_connection: int
    block_s: float = 300.0  # penalty block after repeated deferrals: several minutes

    def limits(self) -> ProviderLimits:
        return ProviderLimits(
            rate_per_min=self.rate_per_min,
            burst=self.burst,
            connections=self.connections,
            per_connection=self.per_connection,
            block_s=self.block_s,
        )

    def ideal_seconds(self, messages: int, sources: int) -> float:
        """The simulator's ideal span for `messages` from `sources` addresses."""
        model = ProviderModel(self.limits(), PROVIDERS[self.kind][0])
        return model.ideal_seconds(messages, sources)

    @property
    def limits_text(self) -> str:
        return (
            f"{self.rate_per_min:g}/min b{self.burst} {self.connections}c {self.per_connection}/c"
        )


DESTINATIONS = (
    Destination("google", "google", "gmail.com", 0.4, "127.0.0.51", 600, 20, 5, 50),
    Destination("yahoo", "yahoo", "yahoo.com", 0.2, "127.0.0.52", 300, 10, 3, 20),
    Destination("microsoft", "microsoft", "outlook.com", 0.2, "127.0.0.53", 300, 10, 4, 50),
    Destination("isp-one", "isp", "isp-one.example", 0.1, "127.0.0.54", 60, 5, 2, 10),
    Destination("isp-two", "isp", "isp-two.example", 0.1, "127.0.0.55", 30, 3, 2, 20),
)


@dataclass(frozen=True)
class Preset:
    recipients: int
    budget_s: float


FULL = Preset(3000, 45 * 60.0)
QUICK = Preset(600, 10 * 60.0)


# --------------------------------------------------------------------------- the campaign


def split(total: int, destinations: Sequence[Destination] = DESTINATIONS) -> dict[str, int]:
    """Recipients per destination by share, largest remainders first: they add up to total."""
    weight = sum(d.share for d in destinations)
    exact = {d.name: total * d.share / weight for d in destinations}
    counts = {name: int(value) for name, value in exact.items()}
    left = total - sum(counts.values())
    by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
    for name in by_remainder[:left]:
        counts[name] += 1
    return counts


def recipients(
    total: int, destinations: Sequence[Destination] = DESTINATIONS, seed: int = SEED
) -> list[tuple[str, str]]:
    """(destination name, address) of every recipient, providers interleaved at random but the
    same order every run; addresses are unique."""
    counts = split(total, destinations)
    out = [(d.name, f"r{n:05d}@{d.domain}") for d in destinations for n in range(counts[d.name])]
    random.Random(seed).shuffle(out)
    return out


def source_setting(fields: Mapping[str, Any], sources: Sequence[str]) -> tuple[str, str, int]:
    """(environment variable, value, addresses used) for the pool's source addresses, given
    OutboundSettings.model_fields: every address, comma-separated, when the code reads a list
    of them, else the first one only (the single-address setting)."""
    if "source_addresses" in fields:
        return "MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES", ",".join(sources), len(sources)
    return "MAILSLUICE_OUTBOUND_SOURCE_ADDRESS", sources[0], 1


# --------------------------------------------------------------------------- figures


class SummaryRow(Protocol):
    """A row of ProviderSim.summary() (support/provider_sim.py), as far as it is read here."""

    provider: str
    delivered: int
    span_s: float
    ideal_s: float
    attempts: int
    deferred: int
    blocks: int
    refusals: int


@dataclass(frozen=True)
class Figures:
    """One line of the table: a provider, or "overall"."""

    provider: str
    planned: int
    delivered: int
    bounced: int
    finished: bool  # every planned recipient delivered or bounced
    ideal_s: float
    span_s: float | None  # None: nothing delivered
    efficiency: float
    attempts: int
    deferred: int
    blocks: int
    refusals: int

    @property
    def deferral_pct(self) -> float:
        return 100.0 * self.deferred / self.attempts if self.attempts else 0.0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["deferral_pct"] = round(self.deferral_pct, 2)
        for key in ("ideal_s", "span_s", "efficiency"):
            if out[key] is not None:
                out[key] = round(out[key], 3 if key == "efficiency" else 1)
        return out


@dataclass(frozen=True)
class Outcome:
    """What the bench saw besides the simulator's rows, per destination name."""

    planned: Mapping[str, int]
    done: Mapping[str, int]  # distinct recipients delivered or bounced
    bounced: Mapping[str, int]
    first_at: Mapping[str, float]  # first accepted message, simulator clock (missing: none)
    stopped_at: float  # when the bench stopped waiting, simulator clock
    sources: int  # source addresses the pool sent from


def figures(
    rows: Sequence[SummaryRow],
    outcome: Outcome,
    destinations: Sequence[Destination] = DESTINATIONS,
) -> list[Figures]:
    """Per destination, then "overall"; `rows`: sim.summary(sources) (with "overall")."""
    planned, done, bounced = outcome.planned, outcome.done, outcome.bounced
    first_at, stopped_at, sources = outcome.first_at, outcome.stopped_at, outcome.sources
    by_name = {row.provider: row for row in rows}
    out = []
    for dest in destinations:
        row, name = by_name[dest.name], dest.name
        finished = done.get(name, 0) >= planned[name]
        left = planned[name] - bounced.get(name, 0)
        ideal = row.ideal_s if finished else dest.ideal_seconds(left, sources)
        span = _span(row, finished, first_at.get(name), stopped_at)
        out.append(
            _figures(
                row,
                planned=planned[name],
                bounced=bounced.get(name, 0),
                finished=finished,
                ideal=ideal,
                span=span,
            )
        )
    firsts = [first_at[d.name] for d in destinations if d.name in first_at]
    overall = by_name["overall"]
    finished = all(f.finished for f in out)
    span = _span(overall, finished, min(firsts) if firsts else None, stopped_at)
    ideal = max((f.ideal_s for f in out), default=0.0)  # side by side: the slowest sets it
    bounced_all = sum(f.bounced for f in out)
    total = sum(planned.values())
    return [
        *out,
        _figures(
            overall, planned=total, bounced=bounced_all, finished=finished, ideal=ideal, span=span
        ),
    ]


def _span(
    row: SummaryRow, finished: bool, first_at: float | None, stopped_at: float
) -> float | None:
    """First to last accepted when finished; first accepted to the stop when not; None when
    nothing was accepted."""
    if row.delivered == 0 or first_at is None:
        return None
    return row.span_s if finished else max(0.0, stopped_at - first_at)


def _figures(
    row: SummaryRow,
    *,
    planned: int,
    bounced: int,
    finished: bool,
    ideal: float,
    span: float | None,
) -> Figures:
    if span is None:
        efficiency = 0.0 if planned > bounced else 1.0
    elif span > 0:
        efficiency = ideal / span
    else:
        efficiency = 1.0 if finished else 0.0  # everything at once, or one message and a stop
    return Figures(
        provider=row.provider,
        planned=planned,
        delivered=row.delivered,
        bounced=bounced,
        finished=finished,
        ideal_s=ideal,
        span_s=span,
        efficiency=efficiency,
        attempts=row.attempts,
        deferred=row.deferred,
        blocks=row.blocks,
        refusals=row.refusals,
    )


def targets(overall: Figures) -> dict[str, dict[str, Any]]:
    """The issue's targets next to the overall figures; an unfinished run meets none."""
    return {
        "efficiency": {
            "target": f">= {TARGET_EFFICIENCY}",
            "value": round(overall.efficiency, 3),
            "met": overall.finished and overall.efficiency >= TARGET_EFFICIENCY,
        },
        "blocks": {
            "target": f"== {TARGET_BLOCKS}",
            "value": overall.blocks,
            "met": overall.blocks == TARGET_BLOCKS,
        },
        "deferral_pct": {
            "target": f"< {TARGET_DEFERRAL_PCT}",
            "value": round(overall.deferral_pct, 2),
            "met": overall.deferral_pct < TARGET_DEFERRAL_PCT,
        },
    }


# --------------------------------------------------------------------------- the report

COLUMNS = (
    ("provider", 10),
    ("limits", 22),
    ("planned", 7),
    ("deliv", 6),
    ("bounce", 6),
    ("ideal_s", 8),
    ("span_s", 8),
    ("effic", 7),
    ("defer%", 7),
    ("blocks", 6),
    ("refused", 7),
)


def table(rows: Sequence[Figures], destinations: Sequence[Destination] = DESTINATIONS) -> list[str]:
    """The table's lines: a header, a line per destination, "overall", then the targets."""
    limits = {d.name: d.limits_text for d in destinations}
    lines = ["  ".join(f"{name:>{width}}" for name, width in COLUMNS)]
    for row in rows:
        span = "-" if row.span_s is None else f"{row.span_s:.0f}"
        effic = f"{row.efficiency:.2f}" if row.finished else f"<={row.efficiency:.2f}"
        cells = (
            row.provider,
            limits.get(row.provider, ""),
            row.planned,
            row.delivered,
            row.bounced,
            f"{row.ideal_s:.0f}",
            span,
            effic,
            f"{row.deferral_pct:.1f}",
            row.blocks,
            row.refusals,
        )
        widths = (width for _, width in COLUMNS)
        lines.append("  ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))
    marks = []
    for name, target in targets(rows[-1]).items():
        verdict = "met" if target["met"] else "MISSED"
        marks.append(f"{name} {target['target']}: {target['value']} {verdict}")
    lines.append("targets (overall): " + "; ".join(marks))
    return lines


def result(rows: Sequence[Figures], **context: Any) -> dict[str, Any]:
    """The stage's JSON object (the last line it prints): context, figures and targets."""
    return {
        **context,
        "providers": {row.provider: row.as_json() for row in rows[:-1]},
        "overall": rows[-1].as_json(),
        "targets": targets(rows[-1]),
    }


def delay_records(metrics_text: str) -> dict[str, float]:
    """Records the worker sent to the retry delay topics, by cause, from its /metrics text: a
    throttled message leaving memory to wait for capacity, or a failure waiting for its retry.
    A few per message is the plan; far more is a re-produce loop."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "mailsluice_delivery_retries_total":
                cause = sample.labels.get("cause", "")
                out[cause] = out.get(cause, 0.0) + sample.value
    return out
