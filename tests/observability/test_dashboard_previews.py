"""The dashboard previews (docs/dashboards/*.png, scripts/render_dashboards.py): Grafana's unit ids
become readable axes (percentunit 0.1 reads "10%"), the committed images come from neutral
sample data, and rendering every dashboard from that data through a real Prometheus (Debian's
package, loaded with promtool's backfill) finds data for every panel and no series hidden under
another."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from PIL import Image
from support.prometheus import render_module

from mailsluice.observability.dashboards import build

RENDER = render_module()
PANELS = RENDER.render_panels
SAMPLES = RENDER.dashboard_samples


def test_units_read_as_grafana_writes_them() -> None:
    fmt = PANELS.fmt
    assert fmt(0.1, "percentunit") == "10%"
    assert fmt(0.001, "percentunit") == "0.1%"
    assert fmt(0.003, "percentunit") == "0.3%"
    assert fmt(25, "percent") == "25%"
    assert fmt(2.5, "ops") == "2.5/s"
    assert fmt(1500, "reqps") == "1.5 k/s"
    assert fmt(1_600_000, "Bps") == "1.6 MB/s"
    assert fmt(0.25, "s", 0.5) == "250 ms"
    assert fmt(30, "s", 60) == "30 s"
    assert fmt(180, "s", 400) == "3 min"
    assert fmt(2000, "short") == "2 k"


def test_every_unit_the_dashboards_use_is_translated() -> None:
    """No Grafana unit id reaches an axis: each has a readable label and formatter."""
    for stem in build.DASHBOARDS:
        for panel in build.build(stem)["panels"]:
            unit = panel["fieldConfig"]["defaults"]["unit"]
            assert unit in PANELS.UNITS, (stem, panel["title"], unit)
            label, _ = PANELS.UNITS[unit]
            assert unit not in label.split(), unit
            assert not re.search(r"[a-z]unit|short", PANELS.fmt(0.5, unit)), unit


def test_fixed_colours_and_hidden_series() -> None:
    panel: dict[str, Any] = json_panel("overview", "Traffic out: recipient outcomes")
    assert PANELS.series_colour(panel, "bounced") == PANELS.COLOURS["red"]
    assert PANELS.series_colour(panel, "delivered") == PANELS.COLOURS["green"]
    assert PANELS.series_colour(panel, "deferred") == PANELS.COLOURS["orange"]
    flat = {"title": "t", "fieldConfig": {"defaults": {}, "overrides": []}}
    same = [("a", [1.0, 2.0]), ("b", [1.0, 2.0]), ("c", [1.0, 3.0])]
    assert PANELS.hidden_series(same, flat) == ["t: 'a' hides 'b'"]
    dashed = json_panel("operator", "Workers: desired vs ready")
    both = [("bulk desired", [3.0, 6.0]), ("bulk ready", [3.0, 6.0])]
    assert PANELS.hidden_series(both, dashed) == []


def json_panel(stem: str, title: str) -> dict[str, Any]:
    board = build.build(stem)
    panel: dict[str, Any] = next(p for p in board["panels"] if p["title"] == title)
    return panel


def test_samples_have_neutral_names_only() -> None:
    now = time.time()
    text = SAMPLES.generate(now - 600, now)
    assert set(re.findall(r'pool="([^"]*)"', text)) == {"bulk", "transactional"}
    assert set(re.findall(r'namespace="([^"]*)"', text)) == {"mailsluice"}
    metrics = set(re.findall(r"^(mailsluice_\w+)\{", text, re.M))
    for stem in build.DASHBOARDS:
        for _, exprs in build.panel_queries(build.build(stem)):
            for expr in exprs:
                for name in re.findall(r"\bmailsluice_\w+", expr):
                    assert name in metrics, (stem, name)


def test_committed_previews_come_from_the_samples() -> None:
    pngs = sorted(RENDER.OUT.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(build.DASHBOARDS)
    for path in pngs:
        with Image.open(path) as image:
            description = image.text.get("Description", "")  # type: ignore[attr-defined]
        assert description.endswith(RENDER.SAMPLES_SOURCE), (
            f"{path.name}: run `python3 scripts/render_dashboards.py --samples`"
        )


def test_every_dashboard_renders_from_the_samples(tmp_path: Path) -> None:
    results = RENDER.render_samples(tmp_path / "out", work=tmp_path)
    assert sorted(p.stem for p, _ in results) == sorted(build.DASHBOARDS)
    problems = [problem for _, found in results for problem in found]
    assert problems == []
    for path, _ in results:
        with Image.open(path) as image:
            assert image.width > 1000 and image.height > 500, path.name
