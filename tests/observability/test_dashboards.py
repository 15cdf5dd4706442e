"""The committed dashboards are what services/mailsluice/observability/dashboards/build.py
generates, and they follow the conventions: a $datasource variable, pool (and provider) variables,
queries that use them."""

from __future__ import annotations

import json

import pytest

from mailsluice.observability.dashboards import build

STEMS = list(build.DASHBOARDS)


@pytest.mark.parametrize("stem", STEMS)
def test_committed_json_is_generated(stem: str) -> None:
    path = build.OUT_DIR / f"mailsluice-{stem}.json"
    assert path.read_text() == build.render(stem), (
        f"{path.name} is stale: run `python -m mailsluice.observability.dashboards.build`"
    )


@pytest.mark.parametrize("stem", STEMS)
def test_variables_and_queries(stem: str) -> None:
    data = json.loads(build.render(stem))
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["pool"]["includeAll"] and variables["pool"]["allValue"] == ".*"
    if stem == "deliverability":
        assert "provider" in variables
    queries = build.panel_queries(data)
    assert len(queries) >= 4
    titles = [title for title, _ in queries]
    assert len(set(titles)) == len(titles)
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
    for title, exprs in queries:
        for expr in exprs:
            assert expr.count("(") == expr.count(")"), title
            if "rate(" in expr:
                assert "[$__rate_interval]" in expr, title
            if "provider_recipients" in expr or "deferrals_total" in expr:
                assert 'provider=~"$provider"' in expr, title


def test_chart_ships_all_dashboards() -> None:
    shipped = sorted(p.name for p in build.OUT_DIR.glob("*.json"))
    assert shipped == sorted(f"mailsluice-{stem}.json" for stem in STEMS)
