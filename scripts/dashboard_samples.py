"""Neutral sample data for the dashboard previews: every metric the dashboards read, for two
pools ("bulk", "transactional") and the usual providers, over a few hours, as OpenMetrics text
that `promtool tsdb create-blocks-from openmetrics` loads into a Prometheus TSDB.

No test run's names (pools, hosts) reach the previews, and every panel has data. The shapes are
made up but plausible: a daily-ish wave, a deferral storm at one provider, a warm-up, a
scale-up the ready workers follow late. Standard library only (scripts/render_dashboards.py
imports it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

SCOPE = {"cluster": "prod-eu-1", "namespace": "mailsluice"}
POOLS = {"bulk": 1.0, "transactional": 0.25}  # pool: share of the volume
PROVIDERS = {"google": 30.0, "microsoft": 16.0, "yahoo": 8.0, "apple": 5.0, "other": 12.0}
# Each provider's own shares of deferrals, bounces, complaints and human opens (google's bulk
# deferrals and complaints are made worse below), so that no two lines coincide.
SHARES = {
    "google": (0.03, 0.006, 0.0005, 0.24),
    "microsoft": (0.06, 0.012, 0.0007, 0.19),
    "yahoo": (0.08, 0.03, 0.0012, 0.21),
    "apple": (0.02, 0.004, 0.0002, 0.31),
    "other": (0.05, 0.016, 0.0004, 0.16),
}
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

Fn = Callable[[float], float]


class Samples:
    """Series over [start, end] every `step` seconds; `text()` is the OpenMetrics file."""

    def __init__(self, start: float, end: float, step: float = 30.0, seed: int = 19) -> None:
        self.start, self.end, self.step = start, end, step
        self.rng = random.Random(seed)
        self.lines: list[str] = []

    def times(self) -> Iterator[float]:
        t = self.start
        while t <= self.end:
            yield t
            t += self.step

    def phase(self, t: float) -> float:
        """0..1 through the sampled span."""
        return (t - self.start) / max(1.0, self.end - self.start)

    def wave(self, base: float, amp: float = 0.3) -> Fn:
        """A smooth rise and fall with a little noise, its own phase per series."""
        shift = self.rng.uniform(0, 2 * math.pi)
        noise = self.rng.uniform(0.02, 0.06)
        rng = self.rng
        return lambda t: max(
            0.0,
            base
            * (1 + amp * math.sin(2 * math.pi * self.phase(t) * 1.3 + shift))
            * (1 + rng.uniform(-noise, noise)),
        )

    def _series(self, name: str, labels: dict[str, str], values: Iterator[tuple[float, float]]):
        merged = {**SCOPE, **labels}
        inner = ",".join(f'{k}="{v}"' for k, v in merged.items())
        for t, v in values:
            self.lines.append(f"{name}{{{inner}}} {v:.6g} {t:.0f}")

    def gauge(self, name: str, labels: dict[str, str], fn: Fn) -> None:
        self._series(name, labels, ((t, fn(t)) for t in self.times()))

    def counter(self, name: str, labels: dict[str, str], rate: Fn) -> None:
        def cumulative() -> Iterator[tuple[float, float]]:
            total = 0.0
            for t in self.times():
                total += rate(t) * self.step
                yield t, total

        self._series(name, labels, cumulative())

    def histogram(
        self, name: str, labels: dict[str, str], rate: Fn, median: float, spread: float = 0.8
    ) -> None:
        """Buckets, count and sum of a log-normal latency around `median` seconds."""
        counts = [(t, rate(t) * self.step) for t in self.times()]

        def cdf(le: float) -> float:
            return 0.5 * (1 + math.erf(math.log(le / median) / (spread * math.sqrt(2))))

        for le in (*BUCKETS, math.inf):
            share = 1.0 if le == math.inf else cdf(le)
            self._series(
                f"{name}_bucket",
                {**labels, "le": "+Inf" if le == math.inf else f"{le:g}"},
                _accumulate(counts, share),
            )
        self._series(f"{name}_count", labels, _accumulate(counts, 1.0))
        self._series(f"{name}_sum", labels, _accumulate(counts, median))

    def text(self) -> str:
        return "\n".join([*self.lines, "# EOF", ""])


def _accumulate(counts: list[tuple[float, float]], share: float) -> Iterator[tuple[float, float]]:
    total = 0.0
    for t, n in counts:
        total += n * share
        yield t, total


def storm(s: Samples, base: float, peak: float, at: float = 0.55, width: float = 0.12) -> Fn:
    """`base`, rising to `peak` around phase `at` (a provider throttling for a while)."""
    return lambda t: base + (peak - base) * math.exp(-(((s.phase(t) - at) / (width / 2)) ** 2))


def delivery(s: Samples) -> None:
    for pool, share in POOLS.items():
        totals: dict[str, list[Fn]] = {"delivered": [], "deferred": [], "bounced": []}
        for provider, volume in PROVIDERS.items():
            sent = s.wave(volume * share)
            defer, bounce_share, complaint, _ = SHARES[provider]
            storming = (pool, provider) == ("bulk", "google")
            defer_share = storm(s, defer, 0.32) if storming else (lambda t, d=defer: d)
            shares: dict[str, Fn] = {
                "deferred": defer_share,
                "bounced": lambda t, b=bounce_share: b,
                "delivered": lambda t, d=defer_share, b=bounce_share: 1 - d(t) - b,
            }
            labels = {"pool": pool, "provider": provider}
            for result, part in shares.items():
                fn = _times(sent, part)
                totals[result].append(fn)
                s.counter(
                    "mailsluice_delivery_provider_recipients_total",
                    {**labels, "source": pool, "result": result},
                    fn,
                )
            complaint = 0.0032 if storming else complaint
            s.counter(
                "mailsluice_ingest_complaints_total",
                labels,
                _times(totals["delivered"][-1], complaint),
            )
            _classes(s, labels, totals)
        _pool_totals(s, pool, share, totals)


def _times(fn: Fn, part: Fn | float) -> Fn:
    if callable(part):
        return lambda t: fn(t) * part(t)
    return lambda t: fn(t) * part


def _classes(s: Samples, labels: dict[str, str], totals: dict[str, list[Fn]]) -> None:
    for cls, part in (("5.1", 0.7), ("5.7", 0.2), ("5.2", 0.1)):
        s.counter(
            "mailsluice_delivery_bounces_total",
            {**labels, "class": cls},
            _times(totals["bounced"][-1], part),
        )
    for reason, part in (("4.7", 0.6), ("4.2", 0.25), ("4.4", 0.15)):
        s.counter(
            "mailsluice_delivery_deferrals_total",
            {**labels, "reason": reason},
            _times(totals["deferred"][-1], part),
        )


def _pool_totals(s: Samples, pool: str, share: float, totals: dict[str, list[Fn]]) -> None:
    for result, fns in totals.items():
        fn = _sum(fns)
        s.counter("mailsluice_delivery_recipients_total", {"pool": pool, "result": result}, fn)
        s.counter("mailsluice_delivery_attempts_total", {"pool": pool, "result": result}, fn)
    expired = _times(_sum(totals["deferred"]), 0.02)
    s.counter("mailsluice_delivery_recipients_total", {"pool": pool, "result": "expired"}, expired)
    for partition in range(3):
        lag = s.wave(600 * share, 0.8) if pool == "bulk" else s.wave(4, 0.5)
        s.gauge(
            "mailsluice_delivery_queue_lag_records",
            {"pool": pool, "partition": str(partition)},
            lag,
        )
    age = 40.0 if pool == "bulk" else 1.5
    s.histogram(
        "mailsluice_delivery_queue_age_seconds", {"pool": pool}, _sum(totals["delivered"]), age
    )
    for tier, part in (("1m", 0.7), ("10m", 0.25), ("1h", 0.05)):
        for cause in ("failure", "throttled"):
            s.counter(
                "mailsluice_delivery_retries_total",
                {"pool": pool, "tier": tier, "cause": cause},
                _times(_sum(totals["deferred"]), part / 2),
            )
    s.gauge("mailsluice_delivery_inflight_messages", {"pool": pool}, s.wave(800 * share))
    paused = storm(s, 0.0, 1.0, at=0.56, width=0.05) if pool == "bulk" else (lambda t: 0.0)
    s.gauge("mailsluice_delivery_paused", {"pool": pool}, lambda t: float(paused(t) > 0.5))


def _sum(fns: list[Fn]) -> Fn:
    return lambda t: sum(fn(t) for fn in fns)


def shaping(s: Samples) -> None:
    states = {"steady": 38, "slow_start": 3, "fixed": 4, "hold": 2, "probing": 1, "suspended": 1}
    for pool, share in POOLS.items():
        for state, count in states.items():
            n = max(1, round(count * share))
            # lanes go into hold during the deferral storm
            held = storm(s, n, 9) if (pool, state) == ("bulk", "hold") else (lambda t, n=n: n)
            s.gauge(
                "mailsluice_shaping_destinations",
                {"pool": pool, "state": state},
                lambda t, f=held: round(f(t)),
            )
        # into hold on the storm's deferrals, then probing, then steady again
        for state, cls, at in (
            ("hold", "rate", 0.5),
            ("probing", "rate", 0.6),
            ("steady", "rate", 0.7),
        ):
            s.counter(
                "mailsluice_shaping_state_changes_total",
                {"pool": pool, "state": state, "reply_class": cls},
                _times(storm(s, 0.001, 0.05, at=at, width=0.08), share),
            )
        for provider, volume in PROVIDERS.items():
            labels = {"pool": pool, "provider": provider}
            ceiling = volume * share * 1.6
            now: Fn = (
                storm(s, ceiling, ceiling * 0.45)
                if (pool, provider) == ("bulk", "google")
                else (lambda t, c=ceiling: c)
            )
            s.gauge("mailsluice_shaping_provider_rate_messages_per_second", labels, now)
            learned = ceiling * (0.7 if provider == "google" else 1.2)
            s.gauge(
                "mailsluice_shaping_provider_learned_ceiling_messages_per_second",
                labels,
                lambda t, c=learned: c,
            )


def warmup(s: Samples) -> None:
    # documentation addresses (RFC 5737); the second one reaches its cap before the end
    for ip, cap, pace in (("192.0.2.10", 5000.0, 0.8), ("192.0.2.11", 2000.0, 1.4)):
        base = {"pool": "bulk", "source_ip": ip, "scope": "*", "period": "day"}
        s.gauge("mailsluice_warmup_cap_messages", base, lambda t, c=cap: c)
        s.gauge(
            "mailsluice_warmup_used_messages",
            base,
            lambda t, c=cap, p=pace: c * min(1.0, p * s.phase(t)),
        )
        s.gauge(
            "mailsluice_warmup_day",
            {"pool": "bulk", "source_ip": ip},
            lambda t, d=(12 if cap > 3000 else 5): d,
        )


def ingest(s: Samples) -> None:
    messages = s.wave(25.0)
    s.gauge("mailsluice_ingest_connections_open", {}, s.wave(140.0))
    s.counter("mailsluice_ingest_connections_total", {}, s.wave(12.0))
    for result, part in (
        ("queued", 0.95),
        ("tempfail", 0.02),
        ("rejected", 0.02),
        ("too_big", 0.005),
        ("aborted", 0.005),
    ):
        s.counter(
            "mailsluice_ingest_transactions_total", {"result": result}, _times(messages, part)
        )
    for result, reason, part in (
        ("accepted", "", 3.6),
        ("rejected", "suppressed", 0.08),
        ("rejected", "no_domain", 0.03),
        ("rejected", "syntax", 0.01),
    ):
        s.counter(
            "mailsluice_ingest_recipients_total",
            {"result": result, "reason": reason},
            _times(messages, part),
        )
    s.counter("mailsluice_ingest_bytes_total", {}, _times(messages, 48_000))
    s.histogram("mailsluice_ingest_kafka_publish_seconds", {}, messages, 0.012, 0.6)
    s.histogram("mailsluice_ingest_transaction_seconds", {}, messages, 0.09, 0.7)
    for kind, rate in (("early_talker", 0.02), ("too_many_errors", 0.01)):
        s.counter("mailsluice_ingest_protocol_violations_total", {"kind": kind}, s.wave(rate))
    s.histogram("mailsluice_dns_lookup_seconds", {"rtype": "MX"}, s.wave(6.0), 0.004, 1.0)
    for reason, rate in (("nxdomain", 0.08), ("timeout", 0.01)):
        s.counter(
            "mailsluice_dns_lookup_failures_total", {"rtype": "MX", "reason": reason}, s.wave(rate)
        )
    for stage, median in (("connect", 0.06), ("tls", 0.12), ("transaction", 0.45)):
        s.histogram("mailsluice_delivery_smtp_seconds", {"stage": stage}, s.wave(20.0), median, 0.6)
    for tier, n in (("1m", 120.0), ("10m", 300.0), ("1h", 90.0)):
        s.gauge("mailsluice_retry_mover_backlog_records", {"tier": tier}, s.wave(n))
    s.gauge("mailsluice_retry_mover_waiting_records", {}, s.wave(40.0))


def streams(s: Samples) -> None:
    for pool, share in POOLS.items():
        for provider, volume in PROVIDERS.items():
            labels = {"pool": pool, "provider": provider}
            delivered = s.wave(volume * share * 0.9)
            s.counter("mailsluice_streams_delivered_total", labels, delivered)
            machine = 0.25 if provider == "apple" else 0.05
            opens = SHARES[provider][3] * (1.1 if pool == "transactional" else 1.0)
            for what, human in (("open", opens), ("click", opens * 0.15)):
                extra = machine if what == "open" else 0.01
                s.counter(
                    f"mailsluice_streams_{what}s_total",
                    {**labels, "kind": "all"},
                    _times(delivered, human + extra),
                )
                s.counter(
                    f"mailsluice_streams_{what}s_total",
                    {**labels, "kind": "human"},
                    _times(delivered, human),
                )
                s.counter(
                    "mailsluice_streams_human_retracted_total",
                    {**labels, "kind": what},
                    _times(delivered, human * 0.01),
                )


def operator(s: Samples) -> None:
    s.counter("mailsluice_operator_reconciles_total", {"result": "ok"}, lambda t: 0.2)
    s.counter(
        "mailsluice_operator_reconciles_total",
        {"result": "error"},
        storm(s, 0.0, 0.03, at=0.3, width=0.05),
    )
    for pool, (low, high) in (("bulk", (3, 6)), ("transactional", (2, 2))):

        def desired(t: float, lo: int = low, hi: int = high) -> float:
            return hi if 0.4 < s.phase(t) < 0.8 else lo

        lag = 0.04 * (s.end - s.start)  # the new workers become ready a little later
        s.gauge("mailsluice_operator_workers", {"pool": pool, "kind": "desired"}, desired)
        s.gauge(
            "mailsluice_operator_workers",
            {"pool": pool, "kind": "ready"},
            lambda t, d=desired, g=lag: min(d(t), d(t - g)),
        )


def api(s: Samples) -> None:
    requests = s.wave(4.0)
    for route, code, part in (
        ("messages", "202", 0.8),
        ("messages", "400", 0.03),
        ("messages", "429", 0.02),
        ("messages", "503", 0.005),
        ("templates", "200", 0.1),
        ("suppressions", "200", 0.045),
    ):
        s.counter(
            "mailsluice_api_requests_total", {"route": route, "code": code}, _times(requests, part)
        )
    for result, part in (("accepted", 40.0), ("suppressed", 0.6), ("rejected", 0.2)):
        s.counter("mailsluice_api_recipients_total", {"result": result}, _times(requests, part))
    s.histogram("mailsluice_api_publish_seconds", {}, requests, 0.015, 0.6)
    s.counter("mailsluice_api_idempotent_replays_total", {}, _times(requests, 0.01))
    batches = s.wave(2.0)
    for result, part in (("delivered", 0.95), ("retried", 0.045), ("dead", 0.005)):
        s.counter("mailsluice_webhooks_batches_total", {"result": result}, _times(batches, part))
    s.histogram("mailsluice_webhooks_attempt_seconds", {}, batches, 0.2, 0.7)
    s.gauge("mailsluice_webhooks_buffered_records", {}, s.wave(60.0))
    s.gauge("mailsluice_webhooks_waiting_records", {}, s.wave(15.0))
    s.gauge("mailsluice_webhooks_endpoints_paused", {}, lambda t: float(s.phase(t) > 0.7))


def generate(start: float, end: float, step: float = 30.0) -> str:
    """The OpenMetrics text of every sample series over [start, end]."""
    samples = Samples(start, end, step)
    for part in (delivery, shaping, warmup, ingest, streams, operator, api):
        part(samples)
    return samples.text()
