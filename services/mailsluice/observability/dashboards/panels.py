"""Panel specs, PromQL helpers and the meanings shared by the dashboards.

Every query selects on the `$cluster` / `$namespace` variables (added to every metric selector
by `scoped`, so no panel can forget them), on `$pool` / `$provider` where it has those labels,
and uses `$__rate_interval`; every panel picks its Prometheus through the `$datasource` variable.
The Grafana JSON is built from these specs in grafana.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RI = "$__rate_interval"
SCOPE = 'cluster=~"$cluster", namespace=~"$namespace"'
POOL = 'pool=~"$pool"'
PP = 'pool=~"$pool", provider=~"$provider"'

# Fixed colours by meaning (Grafana's named colours), so that "bounced" is red on every board
# whatever the order of the series: good outcomes green, waiting ones amber, failures red.
GOOD, WAIT, BAD, LOST = "green", "orange", "red", "dark-red"
MEANING = {
    "delivered": GOOD,
    "queued": GOOD,
    "accepted": GOOD,
    "ready": GOOD,
    "ok": GOOD,
    "deferred": WAIT,
    "tempfail": WAIT,
    "retried": WAIT,
    "suppressed": WAIT,
    "desired": "blue",
    "bounced": BAD,
    "complaints": BAD,
    "rejected": BAD,
    "error": BAD,
    "dead": LOST,
    "expired": LOST,
    "too_big": BAD,
    "aborted": "text",
}

# The rates providers judge a sender by: (warn, critical) as shares. Bounces: keep below 2%,
# the alert fires at 5%; complaints: Gmail's 0.1% and 0.3%; deferrals: MailsluiceDeferralSpike
# needs 25%.
BOUNCE_LIMITS = (0.02, 0.05)
COMPLAINT_LIMITS = (0.001, 0.003)
DEFERRAL_LIMITS = (0.10, 0.25)


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    # (series name regexp as Grafana's byRegexp anchors it, Grafana colour)
    colors: tuple[tuple[str, str], ...] = ()
    limits: tuple[float, float] | None = None  # (warn, critical): stat colours, lines on a graph
    stack: bool = False  # parts of a whole: stacked, so none hides another
    dashed: tuple[str, ...] = ()  # series (regexps) drawn dashed, visible over equal ones
    soft_max: float | None = None  # the y axis reaches at least this (rates near zero)


def meaning(*words: str) -> tuple[tuple[str, str], ...]:
    """Colour overrides for series named `word` or ending in " word" (e.g. "google bounced";
    a legend whose last label is empty ends in a space)."""
    return tuple((f"(.* )?{re.escape(word)} ?", MEANING[word]) for word in words)


_SELECTOR = re.compile(r"\b(mailsluice_\w+)(\{([^}]*)\})?")


def scoped(expr: str) -> str:
    """`expr` with the cluster and namespace matchers in every mailsluice_* selector."""

    def add(match: re.Match[str]) -> str:
        inner = (match.group(3) or "").strip()
        return f"{match.group(1)}{{{SCOPE}{', ' + inner if inner else ''}}}"

    return _SELECTOR.sub(add, expr)


def rate(metric: str, selector: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[{RI}]))"


def ratio(metric: str, selector: str, result: str, by: str = "") -> str:
    part = rate(metric, f'{selector}, result="{result}"', by)
    return f"{part}\n  / clamp_min({rate(metric, selector, by)}, 1e-9)"


def quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{{{selector}}}[{RI}])))"


def percentiles(
    metric: str, selector: str, qs: tuple[float, ...] = (0.5, 0.99)
) -> tuple[tuple[str, str], ...]:
    """One target per quantile of a histogram, legends "p50", "p99"..."""
    return tuple((quantile(q, metric, selector), f"p{round(q * 100)}") for q in qs)


def metrics_of(expr: str) -> list[str]:
    return [m.group(1) for m in _SELECTOR.finditer(expr)]
