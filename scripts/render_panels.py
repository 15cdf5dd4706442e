"""Drawing one Grafana panel with matplotlib the way Grafana shows it: the unit as readable axis
ticks (percentunit 0.1 is "10%", ops "12/s", s "250 ms"), fixed colour overrides, stacking,
dashed series, threshold lines and the axis' min and soft max; stat panels as a big value on the
colour of its threshold step. Used by scripts/render_dashboards.py; standard library apart
from the matplotlib objects it is handed.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Grafana's named colours (its classic palette), for the fixed-colour overrides and thresholds.
COLOURS = {
    "green": "#73BF69",
    "semi-dark-green": "#56A64B",
    "light-green": "#96D98D",
    "dark-green": "#37872D",
    "yellow": "#FADE2A",
    "orange": "#FF9830",
    "light-orange": "#FFB357",
    "red": "#F2495C",
    "dark-red": "#C4162A",
    "blue": "#5794F2",
    "purple": "#B877D9",
    "text": "#8E8E8E",
}
# Series without an override take the palette Grafana's "classic" scheme starts with, minus its
# meaning-bearing green, amber and red, so an unrelated series never reads as an outcome.
PALETTE = ("#5794F2", "#B877D9", "#8AB8FF", "#6ED0E0", "#CA95E5", "#3274D9", "#8F3BB8", "#1F60C4")

# Grafana unit id: (axis label, tick formatter name). The ids stay out of the images.
UNITS = {
    "percentunit": ("", "percent1"),
    "percent": ("", "percent100"),
    "ops": ("per second", "per_second"),
    "reqps": ("requests per second", "per_second"),
    "Bps": ("bytes per second", "bytes_per_second"),
    "s": ("", "seconds"),
    "short": ("", "si"),
    "none": ("", "si"),
}


def si(value: float) -> str:
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def fmt(value: float, unit: str, top: float | None = None) -> str:
    """A value as Grafana writes it in this unit (durations on an axis reaching `top` all in
    the same unit)."""
    kind = UNITS.get(unit, ("", "si"))[1]
    if kind == "percent1":
        return _percent(value * 100)
    if kind == "percent100":
        return _percent(value)
    if kind == "seconds":
        return _seconds(value, value if top is None else top)
    if kind == "per_second":
        return f"{si(value)}/s"
    if kind == "bytes_per_second":
        for factor, suffix in ((1e9, " GB/s"), (1e6, " MB/s"), (1e3, " kB/s")):
            if value >= factor:
                return f"{value / factor:.3g}{suffix}"
        return f"{value:.3g} B/s"
    return si(value)


def _percent(value: float) -> str:
    if value == 0:
        return "0%"
    return f"{value:.2g}%" if abs(value) < 1 else f"{value:.3g}%"


def _seconds(value: float, top: float) -> str:
    if value == 0:
        return "0 s"
    if top < 1:
        return f"{value * 1000:.3g} ms"
    if top < 300:
        return f"{value:.3g} s"
    return f"{value / 60:.3g} min"


def series_colour(panel: dict[str, Any], name: str) -> str | None:
    """The fixed colour a byRegexp or byName override gives the series, if any."""
    for override in panel.get("fieldConfig", {}).get("overrides", ()):
        if _matches(override["matcher"], name):
            for prop in override["properties"]:
                if prop["id"] == "color" and prop["value"].get("mode") == "fixed":
                    colour = prop["value"]["fixedColor"]
                    return str(COLOURS.get(colour, colour))
    return None


def series_dashed(panel: dict[str, Any], name: str) -> bool:
    for override in panel.get("fieldConfig", {}).get("overrides", ()):
        if _matches(override["matcher"], name):
            for prop in override["properties"]:
                if prop["id"] == "custom.lineStyle" and prop["value"].get("fill") == "dash":
                    return True
    return False


def _matches(matcher: dict[str, Any], name: str) -> bool:
    if matcher["id"] == "byName":
        return bool(matcher["options"] == name)
    if matcher["id"] == "byRegexp":
        # Grafana anchors a pattern not written /.../ at both ends.
        pattern = str(matcher["options"])
        if pattern.startswith("/") and pattern.endswith("/"):
            return re.search(pattern[1:-1], name) is not None
        return re.fullmatch(pattern, name) is not None
    return False


def threshold_steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    return [(s.get("value"), COLOURS.get(s["color"], s["color"])) for s in steps]


def hidden_series(series: list[tuple[str, list[float]]], panel: dict[str, Any]) -> list[str]:
    """Pairs of series drawn on the same line, so that one hides the other: equal values at
    every point, neither stacked nor dashed."""
    custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
    if custom.get("stacking", {}).get("mode") == "normal":
        return []
    found = []
    for i, (a, ys_a) in enumerate(series):
        for b, ys_b in series[i + 1 :]:
            same = len(ys_a) == len(ys_b) and all(
                math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
                for x, y in zip(ys_a, ys_b, strict=True)
            )
            if same and not (series_dashed(panel, a) or series_dashed(panel, b)):
                found.append(f"{panel['title']}: {a!r} hides {b!r}")
    return found


def draw_timeseries(
    ax: Any, panel: dict[str, Any], xs: list[float], series: list[tuple[str, list[float]]]
) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    base = [0.0] * len(xs)
    spare = iter(PALETTE * 4)
    top = 0.0
    for name, ys in series:
        colour = series_colour(panel, name) or next(spare)
        style = "--" if series_dashed(panel, name) else "-"
        width = 2.0 if style == "--" else 1.3
        if stacked:
            upper = [b + (0.0 if math.isnan(y) else y) for b, y in zip(base, ys, strict=True)]
            ax.fill_between(xs, base, upper, color=colour, alpha=0.45, linewidth=0)
            ax.plot(xs, upper, color=colour, label=name, linewidth=1.0)
            base = upper
            top = max([top, *upper])
        else:
            ax.plot(xs, ys, color=colour, label=name, linestyle=style, linewidth=width)
            top = max([top, *(y for y in ys if not math.isnan(y))])
    _axis(ax, panel, unit, top)


def _axis(ax: Any, panel: dict[str, Any], unit: str, top: float) -> None:
    from matplotlib.ticker import FuncFormatter

    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        for value, colour in threshold_steps(panel):
            if value is not None:
                ax.axhline(value, color=colour, linestyle=(0, (4, 3)), linewidth=1.2)
                top = max(top, value)
    soft_max = custom.get("axisSoftMax")
    if soft_max is not None:
        top = max(top, soft_max)
    low = defaults.get("min", None)
    # An all-zero panel still gets an axis that reads as a quantity, not -0.04..0.04.
    ceiling = (top * 1.08) or 1.0
    ax.set_ylim(bottom=low if low is not None else None, top=ceiling)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v, unit, ceiling)))
    ax.set_ylabel(UNITS.get(unit, ("", ""))[0], fontsize=8)


def draw_stat(ax: Any, panel: dict[str, Any], series: list[tuple[str, list[float]]]) -> None:
    """The last value of the panel's series (summed, one per panel here) on the colour of the
    threshold step it reaches."""
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    values = [next(y for y in reversed(ys) if not math.isnan(y)) for _, ys in series if ys]
    value = sum(values) if values else None
    colour = COLOURS["blue"]
    for step, step_colour in threshold_steps(panel):
        if value is not None and (step is None or value >= step):
            colour = step_colour
    ax.set_facecolor(colour)
    if series and len(series[0][1]) > 1:
        # the sparkline of graphMode "area", in the lower part of the panel
        ys = [0.0 if math.isnan(y) else y for y in series[0][1]]
        top = max(ys) or 1.0
        ax.fill_between(range(len(ys)), [y / top * 0.35 for y in ys], color="white", alpha=0.25)
        ax.set_xlim(0, len(ys) - 1)
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_yticks([])
    text = "No data" if value is None else fmt(value, unit)
    ax.text(0.5, 0.55, text, ha="center", va="center", fontsize=22, color="white",
            fontweight="bold", transform=ax.transAxes)  # fmt: skip
