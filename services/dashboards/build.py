"""Grafana dashboards as code, built with grafana-foundation-sdk.

`python -m mailsluice.dashboards.build` writes deploy/helm/mailsluice/dashboards/*.json, which the
chart ships in a ConfigMap labelled grafana_dashboard; tests/test_dashboards.py fails when the
committed JSON differs from what this module builds. Every panel query selects on the
`$pool` / `$provider` variables and uses `$__rate_interval`, and every dashboard picks its
Prometheus through the `$datasource` variable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

OUT_DIR = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "mailsluice" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RI = "$__rate_interval"
POOL = 'pool=~"$pool"'
PP = 'pool=~"$pool", provider=~"$provider"'


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12


def _rate(metric: str, selector: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[{RI}]))"


def _ratio(metric: str, selector: str, result: str, by: str = "") -> str:
    part = _rate(metric, f'{selector}, result="{result}"', by)
    return f"{part}\n  / clamp_min({_rate(metric, selector, by)}, 1e-9)"


def _quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{{{selector}}}[{RI}])))"


OVERVIEW = (
    Panel(
        "Traffic in: messages and recipients accepted",
        "ops",
        (
            (_rate("mailsluice_ingest_transactions_total", 'result="queued"'), "messages"),
            (_rate("mailsluice_ingest_recipients_total", 'result="accepted"'), "recipients"),
        ),
        "What ingest queued to Kafka, per second.",
    ),
    Panel(
        "Traffic out: recipient outcomes",
        "ops",
        ((_rate("mailsluice_delivery_recipients_total", POOL, "result"), "{{result}}"),),
        "Recipient outcomes of delivery attempts per second (deferred ones are retried).",
    ),
    Panel(
        "Delivery rate by pool",
        "ops",
        (
            (
                _rate(
                    "mailsluice_delivery_recipients_total", f'{POOL}, result="delivered"', "pool"
                ),
                "{{pool}}",
            ),
        ),
        "Recipients accepted by remote MX servers per second.",
    ),
    Panel(
        "Bounce and deferral rates",
        "percentunit",
        (
            (_ratio("mailsluice_delivery_recipients_total", POOL, "bounced"), "bounced"),
            (_ratio("mailsluice_delivery_recipients_total", POOL, "deferred"), "deferred"),
        ),
        "Share of recipient outcomes that bounced or were deferred.",
    ),
    Panel(
        "Queue lag by pool",
        "short",
        (("sum by (pool) (mailsluice_delivery_queue_lag_records{" + POOL + "})", "{{pool}}"),),
        "Records in the pool's queue topic not yet finished by its workers.",
    ),
    Panel(
        "Time in queue (p50, p95)",
        "s",
        (
            (_quantile(0.5, "mailsluice_delivery_queue_age_seconds", POOL), "p50"),
            (_quantile(0.95, "mailsluice_delivery_queue_age_seconds", POOL), "p95"),
        ),
        "Age of a record when a delivery attempt ends.",
    ),
    Panel(
        "Retries by tier",
        "ops",
        ((_rate("mailsluice_delivery_retries_total", POOL, "tier, cause"), "{{tier}} {{cause}}"),),
        "Records sent to a retry delay topic per second.",
    ),
    Panel(
        "Retry backlog by tier",
        "short",
        (
            ("sum by (tier) (mailsluice_retry_mover_backlog_records)", "{{tier}}"),
            ("sum(mailsluice_retry_mover_waiting_records)", "fetched, waiting until due"),
        ),
        "Retry records in each delay tier topic, and those the mover holds until due.",
    ),
)

DELIVERABILITY = (
    Panel(
        "Outcomes by provider",
        "ops",
        (
            (
                _rate("mailsluice_delivery_provider_recipients_total", PP, "provider, result"),
                "{{provider}} {{result}}",
            ),
        ),
        "Recipient replies by provider: delivered (2xx), deferred (4xx), bounced (5xx).",
        width=24,
    ),
    Panel(
        "Deferral rate by provider",
        "percentunit",
        (
            (
                _ratio("mailsluice_delivery_provider_recipients_total", PP, "deferred", "provider"),
                "{{provider}}",
            ),
        ),
        "Share of a provider's recipient replies that were 4xx.",
    ),
    Panel(
        "Bounce rate by provider",
        "percentunit",
        (
            (
                _ratio("mailsluice_delivery_provider_recipients_total", PP, "bounced", "provider"),
                "{{provider}}",
            ),
        ),
        "Share of a provider's recipient replies that were 5xx.",
    ),
    Panel(
        "Top deferral reasons",
        "ops",
        (
            (
                "topk(10, "
                + _rate("mailsluice_delivery_deferrals_total", PP, "provider, reason")
                + ")",
                "{{provider}} {{reason}}",
            ),
        ),
        "Deferrals by RFC 3463 status class (4.7: policy/reputation, 4.2: mailbox, ...).",
    ),
    Panel(
        "Bounces by class",
        "ops",
        (
            (
                "topk(10, "
                + _rate("mailsluice_delivery_bounces_total", PP, "provider, class")
                + ")",
                "{{provider}} {{class}}",
            ),
        ),
        "Bounces by RFC 3463 status class (5.1: bad mailbox, 5.7: policy, ...).",
    ),
    Panel(
        "Suspensions and throttling",
        "short",
        (
            ("sum by (state) (mailsluice_shaping_destinations{" + POOL + "})", "{{state}}"),
            (
                _rate("mailsluice_shaping_backoff_triggers_total", POOL, "rule, action"),
                "{{rule}} -> {{action}}",
            ),
        ),
        "Destinations by adaptive state, and backoff rules firing (per second).",
    ),
    Panel(
        "Allowed rate by provider",
        "ops",
        (
            (
                "mailsluice_shaping_provider_rate_messages_per_second{" + PP + "}",
                "{{provider}}",
            ),
        ),
        "Message rate the shaper allows a provider now (after adaptive backoff).",
    ),
    Panel(
        "Warm-up progress (used / cap)",
        "percentunit",
        (
            (
                "max by (pool, scope, period) (mailsluice_warmup_used_messages{" + POOL + "})\n"
                "  / max by (pool, scope, period) "
                "(mailsluice_warmup_cap_messages{" + POOL + "} > 0)",
                "{{pool}} {{scope}} per {{period}}",
            ),
            ("max by (pool) (mailsluice_warmup_day{" + POOL + "})", "{{pool}} day"),
        ),
        "Share of the current warm-up period's cap used, and the warm-up day.",
    ),
)

INGEST = (
    Panel(
        "Connections",
        "short",
        (
            ("sum(rate(mailsluice_ingest_connections_total[" + RI + "]))", "new per second"),
            ("sum(mailsluice_ingest_connections_open)", "open"),
        ),
        "SMTP connections accepted per second, and open now.",
    ),
    Panel(
        "Transactions by result",
        "ops",
        ((_rate("mailsluice_ingest_transactions_total", "", "result"), "{{result}}"),),
        "Message transactions at DATA: queued, tempfail (451), rejected, too_big, aborted.",
    ),
    Panel(
        "Recipients by result and reason",
        "ops",
        (
            (
                _rate("mailsluice_ingest_recipients_total", "", "result, reason"),
                "{{result}} {{reason}}",
            ),
        ),
        "Recipients judged at RCPT; `suppressed` counts suppression-list hits.",
    ),
    Panel(
        "Bytes queued",
        "Bps",
        (("sum(rate(mailsluice_ingest_bytes_total[" + RI + "]))", "bytes"),),
        "Message bytes written to Kafka per second.",
    ),
    Panel(
        "Kafka publish latency (p50, p99)",
        "s",
        (
            (_quantile(0.5, "mailsluice_ingest_kafka_publish_seconds", ""), "p50"),
            (_quantile(0.99, "mailsluice_ingest_kafka_publish_seconds", ""), "p99"),
        ),
        "From the first send to the last acknowledgement of a message.",
    ),
    Panel(
        "Transaction latency (p50, p99)",
        "s",
        (
            (_quantile(0.5, "mailsluice_ingest_transaction_seconds", ""), "p50"),
            (_quantile(0.99, "mailsluice_ingest_transaction_seconds", ""), "p99"),
        ),
        "From MAIL FROM to the reply after DATA.",
    ),
    Panel(
        "DNS lookups and failures",
        "ops",
        (
            (_rate("mailsluice_dns_lookup_seconds_count", "", "rtype"), "{{rtype}} lookups"),
            (
                _rate("mailsluice_dns_lookup_failures_total", "", "rtype, reason"),
                "{{rtype}} {{reason}}",
            ),
        ),
        "MX lookups per second (ingest recipient checks and delivery routing), and failures.",
    ),
    Panel(
        "DNS lookup latency (p95)",
        "s",
        ((_quantile(0.95, "mailsluice_dns_lookup_seconds", "", "rtype"), "{{rtype}}"),),
    ),
    Panel(
        "Outbound SMTP latency by stage (p95)",
        "s",
        ((_quantile(0.95, "mailsluice_delivery_smtp_seconds", "", "stage"), "{{stage}}"),),
        "Delivery side: TCP connect, STARTTLS handshake, one mail transaction.",
    ),
    Panel(
        "Protocol violations",
        "ops",
        ((_rate("mailsluice_ingest_protocol_violations_total", "", "kind"), "{{kind}}"),),
        "Connections closed for early talking, bad pipelining, too many errors or messages.",
    ),
)

OPERATOR = (
    Panel(
        "Reconciles by result",
        "ops",
        ((_rate("mailsluice_operator_reconciles_total", "", "result"), "{{result}}"),),
        "SendingPool reconciliations per second; `error` rounds raised.",
    ),
    Panel(
        "Workers: desired vs ready",
        "short",
        (("sum by (pool, kind) (mailsluice_operator_workers{" + POOL + "})", "{{pool}} {{kind}}"),),
        "Delivery workers the operator asks for, and how many are ready.",
    ),
    Panel(
        "Queue lag by pool (what scaling follows)",
        "short",
        (("sum by (pool) (mailsluice_delivery_queue_lag_records{" + POOL + "})", "{{pool}}"),),
    ),
    Panel(
        "Records in memory, and paused consumers",
        "short",
        (
            ("sum by (pool) (mailsluice_delivery_inflight_messages{" + POOL + "})", "{{pool}}"),
            ("max by (pool) (mailsluice_delivery_paused{" + POOL + "})", "{{pool}} paused"),
        ),
        "Queue records held by the workers; paused = 1 while the memory bound is reached.",
    ),
)

DASHBOARDS: dict[str, tuple[str, str, tuple[Panel, ...]]] = {
    # file stem: (uid, title, panels)
    "overview": ("mailsluice-overview", "Mailsluice / Overview", OVERVIEW),
    "deliverability": (
        "mailsluice-deliverability",
        "Mailsluice / Deliverability by provider",
        DELIVERABILITY,
    ),
    "ingest": ("mailsluice-ingest", "Mailsluice / Ingest", INGEST),
    "operator": ("mailsluice-operator", "Mailsluice / Operator", OPERATOR),
}


def _variables(with_provider: bool) -> list[Any]:
    all_option = VariableOption(selected=True, text="All", value="$__all")
    found = [
        gd.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        gd.QueryVariable("pool")
        .label("Pool")
        .datasource(DATASOURCE)
        .query("label_values(mailsluice_delivery_attempts_total, pool)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(all_option),
    ]
    if with_provider:
        found.append(
            gd.QueryVariable("provider")
            .label("Provider")
            .datasource(DATASOURCE)
            .query("label_values(mailsluice_delivery_provider_recipients_total, provider)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(all_option)
        )
    return found


def _panel(spec: Panel, panel_id: int) -> Any:
    builder: Any = stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .span(spec.width)
        .height(8)
    )
    if spec.description:
        builder = builder.description(spec.description)
    for index, (expr, legend) in enumerate(spec.targets):
        builder = builder.with_target(
            prometheus.Dataquery()
            .expr(expr)
            .legend_format(legend)
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
        )
    return builder


def build(stem: str) -> dict[str, Any]:
    uid, title, panels = DASHBOARDS[stem]
    board = (
        gd.Dashboard(title)
        .uid(uid)
        .tags(["mailsluice"])
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
    )
    for variable in _variables(with_provider=stem == "deliverability"):
        board = board.with_variable(variable)
    for panel_id, spec in enumerate(panels, start=1):
        board = board.with_panel(_panel(spec, panel_id))
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return data


def render(stem: str) -> str:
    return json.dumps(build(stem), indent=2, sort_keys=True) + "\n"


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem in DASHBOARDS:
        path = out_dir / f"mailsluice-{stem}.json"
        path.write_text(render(stem))
        written.append(path)
    return written


def panel_queries(data: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(panel title, its PromQL expressions) of a built or loaded dashboard."""
    return [
        (panel["title"], [t["expr"] for t in panel.get("targets", ())])
        for panel in data.get("panels", ())
        if panel.get("type") != "row"
    ]


def main() -> int:
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
