"""A real Prometheus (Debian's package) for the end-to-end tests, and the helpers around it:
instant queries, and the check that every dashboard panel query parses and returns data
(processes are started and probed with support.processes).

Used by tests/observability/test_prometheus_e2e.py (the pipeline) and
tests/operator/test_prometheus.py (the operator); panel queries are substituted as Grafana sends
them by scripts/render_dashboards.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mailsluice.observability.dashboards import build
from support.eventually import eventually
from support.processes import get, start

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
RULES = ROOT / "deploy" / "helm" / "mailsluice" / "rules" / "mailsluice.rules.yaml"


def render_module() -> Any:
    """scripts/render_dashboards.py, loaded by path (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "render_dashboards", ROOT / "scripts" / "render_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def substitute(expr: str) -> str:
    return str(render_module().substitute(expr, "1m"))


def query(prom: str, expr: str) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr})
    status, body = get(f"{prom}/api/v1/query?{params}")
    data: dict[str, Any] = json.loads(body or b"{}")
    data["http_status"] = status
    return data


def start_prometheus(
    tmp_path: Path, port: int, targets: dict[str, int], log: Path
) -> subprocess.Popen[bytes]:
    """Prometheus on 127.0.0.1:port scraping 127.0.0.1:<target port>/metrics every second,
    one job per name in targets."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
            for job, target in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    return start(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {"PATH": os.environ.get("PATH", "")},
        log,
    )


def check_panels(
    prom: str, stems: list[str], exempt: Callable[[list[str]], bool] = lambda _: False
) -> tuple[list[str], int]:
    """Evaluate every panel query of the dashboards `stems`; (problems, queries evaluated).
    A panel none of whose queries returns data is a problem unless exempt(its queries)."""
    problems: list[str] = []
    checked = 0
    for stem in stems:
        board = json.loads((build.OUT_DIR / f"mailsluice-{stem}.json").read_text())
        for title, exprs in build.panel_queries(board):
            has_data = False
            for expr in exprs:
                got = query(prom, substitute(expr))
                checked += 1
                if got.get("status") != "success":
                    problems.append(f"{stem}/{title}: {expr}: {got.get('error')}")
                elif got["data"]["result"]:
                    has_data = True
            if not has_data and not exempt(exprs):
                problems.append(f"{stem}/{title}: no data")
    return problems, checked


async def panels_with_data(
    prom: str,
    stems: list[str],
    detail: Callable[[], str],
    exempt: Callable[[list[str]], bool] = lambda _: False,
    *,
    within: float = 60,
) -> int:
    """Wait until every panel of the dashboards `stems` returns data (check_panels); the
    number of queries evaluated."""
    problems: list[str] = []

    def every_panel_has_data() -> int:
        problems[:], checked = check_panels(prom, stems, exempt)
        return 0 if problems else checked

    checked: int = await eventually(
        every_panel_has_data,
        within=within,
        interval=1,
        blocking=True,
        what=f"every panel of {', '.join(stems)} to return data",
        detail=lambda: "\n".join(problems) + "\n" + detail(),
    )
    return checked


def check_alerts(prom: str, group_prefix: str = "") -> tuple[list[str], int]:
    """Evaluate every alert expression (of the rule groups named group_prefix...): each must
    parse. (problems, expressions evaluated)."""
    problems: list[str] = []
    checked = 0
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        if not group["name"].startswith(group_prefix):
            continue
        for rule in group["rules"]:
            got = query(prom, rule["expr"])
            checked += 1
            if got.get("status") != "success":
                problems.append(f"alert {rule['alert']}: {got.get('error')}")
    return problems, checked
