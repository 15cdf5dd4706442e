"""Panel specs, PromQL helpers and the grafana-foundation-sdk builders shared by the dashboards.

Every query selects on the `$pool` / `$provider` variables and uses `$__rate_interval`, and every
panel picks its Prometheus through the `$datasource` variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

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


def variables(with_provider: bool) -> list[Any]:
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


def panel(spec: Panel, panel_id: int) -> Any:
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
