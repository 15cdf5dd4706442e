"""Grafana dashboards as code, built with grafana-foundation-sdk.

`python -m mailsluice.observability.dashboards.build` writes
deploy/helm/mailsluice/dashboards/*.json, which the chart ships in a ConfigMap labelled
grafana_dashboard; tests/observability/test_dashboards.py fails when the committed JSON differs from
what this module builds. Panel specs and query helpers live in panels.py, their Grafana form in
grafana.py, each dashboard's panel list in its own module.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync

from mailsluice.observability.dashboards.api_board import API
from mailsluice.observability.dashboards.deliverability import DELIVERABILITY
from mailsluice.observability.dashboards.grafana import panel, variables
from mailsluice.observability.dashboards.ingest import INGEST
from mailsluice.observability.dashboards.operator_board import OPERATOR
from mailsluice.observability.dashboards.overview import OVERVIEW
from mailsluice.observability.dashboards.panels import Panel, metrics_of

OUT_DIR = Path(__file__).resolve().parents[4] / "deploy" / "helm" / "mailsluice" / "dashboards"

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
    "api": ("mailsluice-api", "Mailsluice / HTTP API and webhooks", API),
}


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
    exprs = [expr for spec in panels for expr, _ in spec.targets]
    used = {name for name in ("pool", "provider") if any(f'"${name}"' in e for e in exprs)}
    # The cluster and namespace choices come from the board's first metric.
    for variable in variables(metrics_of(exprs[0])[0], used):
        board = board.with_variable(variable)
    for panel_id, spec in enumerate(panels, start=1):
        board = board.with_panel(panel(spec, panel_id))
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
