"""Render every Grafana dashboard to a PNG preview (matplotlib), from a Prometheus' data.

    python3 scripts/render_dashboards.py --samples
    python3 scripts/render_dashboards.py --prometheus http://127.0.0.1:9090 --minutes 5

--samples (how the committed docs/dashboards/*.png are made) loads neutral sample data
(scripts/dashboard_samples.py: pools "bulk" and "transactional", the usual providers) into a
fresh TSDB with `promtool tsdb create-blocks-from openmetrics`, runs Debian's Prometheus on it
(127.0.0.1, a free port, stopped by pid) and renders from it; --prometheus renders from a
running one. Either way each panel is queried with /api/v1/query_range the way Grafana would
(variables at "All", $__rate_interval as --rate-interval) and drawn at its gridPos the way
Grafana shows it (scripts/render_panels.py: units, colours, stacking, thresholds, stat panels).
Needs matplotlib (the project's dev dependencies).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import dashboard_samples
import render_panels

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "helm" / "mailsluice" / "dashboards"
OUT = ROOT / "docs" / "dashboards"
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_VARIABLE = re.compile(r'=~"\$\w+"')
SAMPLE_HOURS = 3.0
# Written into each preview's PNG metadata: tests check the committed ones say it.
SAMPLES_SOURCE = "sample data (scripts/dashboard_samples.py)"


def substitute(expr: str, rate_interval: str = "1m") -> str:
    """A panel query as Grafana sends it with every variable at "All"."""
    return _VARIABLE.sub('=~".*"', expr.replace("$__rate_interval", rate_interval))


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


def panel_series(
    prometheus: str, panel: dict[str, Any], times: list[float], rate_interval: str
) -> list[tuple[str, list[float]]]:
    """(legend, values at `times`, 0 where missing) of every series of the panel's targets."""
    step = times[1] - times[0] if len(times) > 1 else 1.0
    found = []
    for target in panel.get("targets", ()):
        expr = substitute(target["expr"], rate_interval)
        for series in query_range(prometheus, expr, times[0], times[-1], step):
            # a point missing from the answer is a gap, not a zero
            ys = [math.nan] * len(times)
            for t, v in series["values"]:
                index = round((float(t) - times[0]) / step)
                if 0 <= index < len(ys):
                    ys[index] = float(v)
            found.append((legend(target.get("legendFormat", ""), series["metric"]), ys))
    return found


def render_dashboard(
    path: Path,
    prometheus: str,
    *,
    start: float,
    end: float,
    out_dir: Path,
    rate_interval: str,
    source: str = "live data",
) -> tuple[Path, list[str]]:
    """The dashboard's PNG, and the problems seen (a series hidden under another, no data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(path.read_text())
    panels = [p for p in board["panels"] if p.get("targets")]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.4  # inches per Grafana grid row
    fig = plt.figure(figsize=(16, unit_h * rows + 0.7))
    step = max(1, round((end - start) / 180))
    times = [start + step * i for i in range(int((end - start) // step) + 1)]
    # Long runs read in minutes, the end-to-end tests' short ones in seconds.
    scale, axis = (60.0, "minutes") if end - start > 600 else (1.0, "seconds")
    xs = [(t - end) / scale for t in times]
    problems: list[str] = []
    for panel in panels:
        ax = fig.add_axes(_place(panel["gridPos"], panel["type"], rows, unit_h, 0.7))
        series = panel_series(prometheus, panel, times, rate_interval)
        ax.set_title(panel["title"], fontsize=9)
        if not series:
            problems.append(f"{board['title']} / {panel['title']}: no data")
        if panel["type"] == "stat":
            render_panels.draw_stat(ax, panel, series)
            continue
        problems += render_panels.hidden_series(series, panel)
        render_panels.draw_timeseries(ax, panel, xs, series)
        ax.set_xlabel(f"{axis} before the end", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6, loc="upper left", ncol=3)
    fig.suptitle(board["title"], fontsize=13, y=1 - 0.2 / (unit_h * rows + 0.7))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / (path.stem.removeprefix("mailsluice-") + ".png")
    fig.savefig(out, dpi=72, metadata={"Description": f"{board['title']}: {source}"})
    plt.close(fig)
    return out, problems


def _place(
    g: dict[str, int], kind: str, rows: int, unit_h: float, header: float
) -> tuple[float, float, float, float]:
    """The axes rectangle (figure fractions) of a panel at Grafana gridPos `g`: the cell less
    room for the title, the y tick labels and the x label (stat panels need none of those)."""
    height = unit_h * rows + header
    left_pad, right_pad = (0.004, 0.004) if kind == "stat" else (0.05, 0.012)
    top_pad, bottom_pad = 0.3, (0.06 if kind == "stat" else 0.5)
    x0 = g["x"] / 24 + left_pad
    width = g["w"] / 24 - left_pad - right_pad
    y_top = height - header - g["y"] * unit_h - top_pad
    h = g["h"] * unit_h - top_pad - bottom_pad
    return x0, (y_top - h) / height, width, h / height


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str, proc: subprocess.Popen[bytes], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)  # polling a condition with a deadline
    raise RuntimeError(f"prometheus at {url} not ready within {within:g} s")


def render_samples(out_dir: Path = OUT, work: Path | None = None) -> list[tuple[Path, list[str]]]:
    """Load the sample data into a fresh TSDB, run Prometheus on it, render every dashboard."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp)
        end = float(int(time.time()) // 60 * 60)
        start = end - SAMPLE_HOURS * 3600
        (root / "samples.om").write_text(dashboard_samples.generate(start, end))
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics",
             str(root / "samples.om"), str(root / "tsdb")],
            check=True, capture_output=True,
        )  # fmt: skip
        (root / "prometheus.yml").write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
        port = _free_port()
        with open(root / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(
                ["prometheus", f"--config.file={root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={root / 'tsdb'}", "--storage.tsdb.retention.time=10y",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            _ready(url, proc)
            return [
                render_dashboard(
                    path,
                    url,
                    start=start + 600,
                    end=end,
                    out_dir=out_dir,
                    rate_interval="2m",
                    source=SAMPLES_SOURCE,
                )
                for path in sorted(DASHBOARDS.glob("*.json"))
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--samples", action="store_true", help="render from sample data")
    source.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.samples:
        results = render_samples(args.out)
    else:
        end = time.time()
        start = end - args.minutes * 60
        results = [
            render_dashboard(
                path, args.prometheus, start=start, end=end, out_dir=args.out,
                rate_interval=args.rate_interval,
            )
            for path in sorted(DASHBOARDS.glob("*.json"))
        ]  # fmt: skip
    for path, problems in results:
        print(path)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
    return 1 if any(problems for _, problems in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
