"""Render every Grafana dashboard's panels from a Prometheus' data to PNG files (matplotlib).

    python scripts/render_dashboards.py --prometheus http://127.0.0.1:9090 --minutes 5

writes docs/dashboards/<dashboard>.png: one image per dashboard, one plot per panel, one line per
series, queried with /api/v1/query_range the way Grafana would (variables set to "All",
$__rate_interval as --rate-interval). tests/observability/test_prometheus_e2e.py calls `render_all`
at its end when MAILSLUICE_RENDER_DASHBOARDS=1, which is how the committed images are made.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "helm" / "mailsluice" / "dashboards"
OUT = ROOT / "docs" / "dashboards"
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """A panel query as Grafana sends it with every variable at "All"."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace('"$pool"', '".*"')
        .replace('"$provider"', '".*"')
    )


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(fmt: str, labels: dict[str, str]) -> str:
    text = _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip()
    return text or json.dumps(labels)


def render_dashboard(
    path: Path, prometheus: str, *, start: float, end: float, out_dir: Path, rate_interval: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(path.read_text())
    panels = [p for p in board["panels"] if p.get("targets")]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    step = max(1.0, (end - start) / 200)
    # Short runs (the end-to-end test's) read better in seconds.
    scale, axis = (60.0, "minutes") if end - start > 600 else (1.0, "seconds")
    for ax, panel in zip(axes.flat, panels, strict=False):
        lines = 0
        for target in panel["targets"]:
            expr = substitute(target["expr"], rate_interval)
            for series in query_range(prometheus, expr, start, end, step):
                xs = [(float(t) - end) / scale for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]))
                lines += 1
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel(f"{axis} before the end", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(board["title"], fontsize=13)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (path.stem.removeprefix("mailsluice-") + ".png")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def render_all(
    prometheus: str,
    start: float,
    end: float,
    out_dir: Path = OUT,
    rate_interval: str = "1m",
    *,
    skip: tuple[str, ...] = (),
) -> list[Path]:
    """Render every dashboard but those whose file stem ends with one of `skip`."""
    return [
        render_dashboard(
            path, prometheus, start=start, end=end, out_dir=out_dir, rate_interval=rate_interval
        )
        for path in sorted(DASHBOARDS.glob("*.json"))
        if not path.stem.endswith(skip)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    end = time.time()
    for path in render_all(
        args.prometheus, end - args.minutes * 60, end, args.out, args.rate_interval
    ):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
