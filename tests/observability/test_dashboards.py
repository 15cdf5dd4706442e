"""The committed dashboards are what services/mailsluice/observability/dashboards/build.py
generates, and they follow the conventions: a $datasource variable, $cluster and $namespace in
every query (and $pool / $provider where the board has them), units on every panel, fixed colours
by meaning, stat panels with the thresholds providers judge by and the same thresholds as lines on
the matching graphs, no series drawn over another."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from mailsluice.observability.dashboards import build
from mailsluice.observability.dashboards.panels import MEANING, scoped

STEMS = list(build.DASHBOARDS)
BOARDS = {stem: json.loads(build.render(stem)) for stem in STEMS}
UNITS = {"percentunit", "ops", "reqps", "Bps", "s", "short"}
GREEN, AMBER, RED = "green", "orange", "red"
_SELECTOR = re.compile(r"\b(mailsluice_\w+)(\{[^}]*\})?")


def _panels(stem: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [p for p in BOARDS[stem]["panels"] if kind is None or p["type"] == kind]


def _panel(stem: str, title: str) -> dict[str, Any]:
    found = [p for p in BOARDS[stem]["panels"] if p["title"] == title]
    assert len(found) == 1, (stem, title)
    return found[0]


def _colour_of(panel: dict[str, Any], series: str) -> str | None:
    """The fixed colour Grafana gives `series` (byRegexp anchors the pattern; last one wins)."""
    colour = None
    for override in panel["fieldConfig"]["overrides"]:
        matcher = override["matcher"]
        if matcher["id"] == "byRegexp" and re.fullmatch(matcher["options"], series):
            for prop in override["properties"]:
                if prop["id"] == "color":
                    colour = prop["value"]["fixedColor"]
    return colour


def _steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(s["value"], s["color"]) for s in steps]


@pytest.mark.parametrize("stem", STEMS)
def test_committed_json_is_generated(stem: str) -> None:
    path = build.OUT_DIR / f"mailsluice-{stem}.json"
    assert path.read_text() == build.render(stem), (
        f"{path.name} is stale: run `python -m mailsluice.observability.dashboards.build`"
    )


@pytest.mark.parametrize("stem", STEMS)
def test_variables_and_queries(stem: str) -> None:
    data = BOARDS[stem]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("cluster", "namespace"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    assert 'cluster=~"$cluster"' in variables["namespace"]["query"]
    queries = build.panel_queries(data)
    assert len(queries) >= 4
    titles = [title for title, _ in queries]
    assert len(set(titles)) == len(titles)
    exprs = [expr for _, group in queries for expr in group]
    for name in ("pool", "provider"):
        used = any(f'=~"${name}"' in expr for expr in exprs)
        assert (name in variables) == used, name
        if used:
            query = variables[name]["query"]
            assert 'cluster=~"$cluster", namespace=~"$namespace"' in query, name
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
    for title, group in queries:
        for expr in group:
            assert expr.count("(") == expr.count(")"), title
            if "rate(" in expr:
                assert "[$__rate_interval]" in expr, title
            if "provider_recipients" in expr or "deferrals_total" in expr:
                assert 'provider=~"$provider"' in expr, title


@pytest.mark.parametrize("stem", STEMS)
def test_every_selector_has_cluster_and_namespace(stem: str) -> None:
    checked = 0
    for title, group in build.panel_queries(BOARDS[stem]):
        for expr in group:
            for match in _SELECTOR.finditer(expr):
                inner = match.group(2) or ""
                assert inner.startswith('{cluster=~"$cluster", namespace=~"$namespace"'), (
                    title,
                    match.group(0),
                )
                checked += 1
    assert checked >= 5


def test_scoping_adds_the_matchers_once() -> None:
    assert scoped("sum(rate(mailsluice_a_total[1m]))") == (
        'sum(rate(mailsluice_a_total{cluster=~"$cluster", namespace=~"$namespace"}[1m]))'
    )
    assert scoped('mailsluice_b{pool=~"$pool"} / mailsluice_c{}') == (
        'mailsluice_b{cluster=~"$cluster", namespace=~"$namespace", pool=~"$pool"}'
        ' / mailsluice_c{cluster=~"$cluster", namespace=~"$namespace"}'
    )


@pytest.mark.parametrize("stem", STEMS)
def test_units(stem: str) -> None:
    """Every panel has a unit; shares are percentunit, latencies seconds, rates per second."""
    for panel in _panels(stem):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS, (panel["title"], unit)
        assert panel["fieldConfig"]["defaults"]["min"] == 0, panel["title"]
        exprs = [t["expr"] for t in panel["targets"]]
        if all("clamp_min(" in e for e in exprs):
            assert unit == "percentunit", panel["title"]
        elif all(e.startswith("histogram_quantile") for e in exprs):
            assert unit == "s", panel["title"]
        elif all("rate(" in e for e in exprs):
            assert unit in ("ops", "reqps", "Bps"), panel["title"]
        # no panel mixes per-second rates with counts on one axis
        assert len({"rate(" in e for e in exprs}) == 1, panel["title"]


OUTCOMES = {
    ("overview", "Traffic out: recipient outcomes"): ("delivered", "deferred", "bounced"),
    ("deliverability", "Outcomes"): ("delivered", "deferred", "bounced"),
    ("overview", "Bounce rate over time"): ("bounced",),
    ("overview", "Deferral rate over time"): ("deferred",),
    ("ingest", "Transactions by result"): ("queued", "tempfail", "rejected"),
    ("api", "Webhook batches by result"): ("delivered", "retried", "dead"),
}


@pytest.mark.parametrize(("where", "words"), OUTCOMES.items(), ids=str)
def test_colours_by_meaning(where: tuple[str, str], words: tuple[str, ...]) -> None:
    panel = _panel(*where)
    for word in words:
        for series in (word, f"google {word}", f"{word} "):
            assert _colour_of(panel, series) == MEANING[word], (where, series)
    assert MEANING["delivered"] == GREEN
    assert MEANING["deferred"] == AMBER
    assert MEANING["bounced"] == MEANING["complaints"] == RED


def test_every_outcome_panel_is_coloured() -> None:
    """A graph split by result carries a fixed colour for each outcome it can show."""
    for stem in STEMS:
        for panel in _panels(stem, "timeseries"):
            legends = [t["legendFormat"] for t in panel["targets"]]
            exprs = " ".join(t["expr"] for t in panel["targets"])
            if "{{result}}" in legends and "mailsluice_delivery_" in exprs:
                for word in ("delivered", "deferred", "bounced"):
                    assert _colour_of(panel, word) == MEANING[word], (stem, panel["title"])


JUDGED = {
    "Bounce rate": (0.02, 0.05),
    "Complaint rate": (0.001, 0.003),
    "Deferral rate": (0.10, 0.25),
}


def test_stat_panels_with_the_rates_providers_judge() -> None:
    stats = {p["title"]: p for p in _panels("deliverability", "stat")}
    assert set(JUDGED) <= set(stats)
    for title, (warn, critical) in JUDGED.items():
        panel = stats[title]
        assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit", title
        assert _steps(panel) == [(None, GREEN), (warn, AMBER), (critical, RED)], title
        assert panel["options"]["colorMode"] == "background", title
    overview = {p["title"]: p for p in _panels("overview", "stat")}
    for title in ("Bounce rate", "Deferral rate"):
        assert _steps(overview[title]) == _steps(stats[title]), title
    for stem in STEMS:
        for panel in _panels(stem, "stat"):
            # no stat left to Grafana's default steps (red from 80)
            assert _steps(panel)[0][0] is None and len(_steps(panel)) in (1, 3), panel["title"]


LINES = {
    ("deliverability", "Bounce rate by provider"): "Bounce rate",
    ("deliverability", "Complaint rate by provider"): "Complaint rate",
    ("deliverability", "Deferral rate by provider"): "Deferral rate",
    ("overview", "Bounce rate over time"): "Bounce rate",
    ("overview", "Deferral rate over time"): "Deferral rate",
}


@pytest.mark.parametrize(("where", "stat"), LINES.items(), ids=str)
def test_threshold_lines_on_the_matching_graphs(where: tuple[str, str], stat: str) -> None:
    panel = _panel(*where)
    custom = panel["fieldConfig"]["defaults"]["custom"]
    assert custom["thresholdsStyle"]["mode"] in ("line", "dashed"), where
    warn, critical = JUDGED[stat]
    assert _steps(panel) == [(None, GREEN), (warn, AMBER), (critical, RED)], where
    # the axis reaches the critical line even while the rate is near zero
    assert custom["axisSoftMax"] >= critical, where


def test_outbound_smtp_latency_is_on_the_delivery_board() -> None:
    def boards_with(metric: str) -> set[str]:
        return {
            stem
            for stem in STEMS
            if any(metric in e for _, g in build.panel_queries(BOARDS[stem]) for e in g)
        }

    assert boards_with("mailsluice_delivery_smtp_seconds") == {"deliverability"}
    ingest_exprs = [e for _, g in build.panel_queries(BOARDS["ingest"]) for e in g]
    assert not any("mailsluice_delivery_" in e for e in ingest_exprs)


def test_no_series_drawn_under_another() -> None:
    """Parts of a whole are stacked; a series that often equals another (desired and ready
    workers, the allowed rate and its learned ceiling) is dashed, drawn over it."""
    for stem, title in (
        ("overview", "Traffic out: recipient outcomes"),
        ("deliverability", "Outcomes"),
        ("deliverability", "Destination lanes by state"),
        ("ingest", "Transactions by result"),
    ):
        custom = _panel(stem, title)["fieldConfig"]["defaults"]["custom"]
        assert custom["stacking"]["mode"] == "normal", title
    for stem, title, series in (
        ("operator", "Workers: desired vs ready", "bulk desired"),
        ("deliverability", "Allowed and learned rate by provider", "bulk google learned ceiling"),
    ):
        panel = _panel(stem, title)
        dashed = [
            o
            for o in panel["fieldConfig"]["overrides"]
            if re.fullmatch(o["matcher"]["options"], series)
            and any(p["id"] == "custom.lineStyle" for p in o["properties"])
        ]
        assert dashed, title


def test_chart_ships_all_dashboards() -> None:
    shipped = sorted(p.name for p in build.OUT_DIR.glob("*.json"))
    assert shipped == sorted(f"mailsluice-{stem}.json" for stem in STEMS)
