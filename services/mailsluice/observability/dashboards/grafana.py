"""The grafana-foundation-sdk side of the dashboards: template variables and panels from the
specs of panels.py (units, fixed colours by meaning, thresholds, stacking)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphTresholdsStyleMode,
    StackingMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from mailsluice.observability.dashboards.panels import SCOPE, Panel, scoped

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def _query_variable(name: str, label: str, query: str) -> Any:
    """A multi-value variable whose "All" matches anything (also series without the label,
    as a single-cluster Prometheus has no `cluster` label)."""
    return (
        gd.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def variables(anchor: str, used: set[str]) -> list[Any]:
    """$datasource, $cluster and $namespace (read from the board's `anchor` metric), then
    $pool and $provider where the board's queries use them."""
    found = [
        gd.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_variable("cluster", "Cluster", f"label_values({anchor}, cluster)"),
        _query_variable(
            "namespace", "Namespace", f'label_values({anchor}{{cluster=~"$cluster"}}, namespace)'
        ),
    ]
    if "pool" in used:
        found.append(
            _query_variable(
                "pool", "Pool", f"label_values(mailsluice_delivery_attempts_total{{{SCOPE}}}, pool)"
            )
        )
    if "provider" in used:
        metric = "mailsluice_delivery_provider_recipients_total"
        found.append(
            _query_variable(
                "provider",
                "Provider",
                f'label_values({metric}{{{SCOPE}, pool=~"$pool"}}, provider)',
            )
        )
    return found


def _thresholds(limits: tuple[float, float]) -> Any:
    warn, critical = limits
    steps = [Threshold(None, "green"), Threshold(warn, "orange"), Threshold(critical, "red")]
    return gd.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def _stat(spec: Panel) -> Any:
    builder = (
        stat.Panel()
        .color_mode(BigValueColorMode.BACKGROUND)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .decimals(2)
        .height(5)
    )
    # A stat without limits is a plain number: one neutral colour (Grafana's default steps
    # would paint anything over 80 red).
    neutral = gd.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(None, "blue")])
    return builder.thresholds(_thresholds(spec.limits) if spec.limits else neutral)


def _timeseries(spec: Panel) -> Any:
    builder = timeseries.Panel().height(8).line_width(1).fill_opacity(10)
    if spec.stack:
        builder = builder.stacking(gc.StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    if spec.limits:
        builder = builder.thresholds(_thresholds(spec.limits)).thresholds_style(
            gc.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)
        )
    soft_max = spec.soft_max if spec.soft_max is not None else (spec.limits or (0, None))[1]
    if soft_max is not None:
        builder = builder.axis_soft_max(soft_max)
    for pattern, colour in spec.colors:
        fixed = {"mode": "fixed", "fixedColor": colour}
        builder = builder.override_by_regexp(pattern, [DynamicConfigValue("color", fixed)])
    for pattern in spec.dashed:
        dash = {"fill": "dash", "dash": [10, 10]}
        builder = builder.override_by_regexp(
            pattern,
            [
                DynamicConfigValue("custom.lineStyle", dash),
                DynamicConfigValue("custom.lineWidth", 2),
            ],
        )
    return builder


def panel(spec: Panel, panel_id: int) -> Any:
    builder = _stat(spec) if spec.kind == "stat" else _timeseries(spec)
    # Every quantity here is a count, a rate, a share or a duration: never below zero.
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .min(0)
        .span(spec.width)
    )
    if spec.description:
        builder = builder.description(spec.description)
    for index, (expr, legend) in enumerate(spec.targets):
        builder = builder.with_target(
            prometheus.Dataquery()
            .expr(scoped(expr))
            .legend_format(legend)
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
        )
    return builder
