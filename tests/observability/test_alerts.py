"""Alert rules: `promtool check rules` on the chart's rule file, `promtool test rules` with unit
tests in which every alert fires and stays quiet, and the annotations every alert has."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from support.paths import REPO

ROOT = REPO
CHART = ROOT / "deploy" / "helm" / "mailsluice"
RULES = CHART / "rules" / "mailsluice.rules.yaml"
UNIT_TESTS = Path(__file__).resolve().parent / "alerts" / "mailsluice.test.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _alerts() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in proc.stdout


def test_promtool_unit_tests(tmp_path: Path) -> None:
    # promtool compares annotations exactly; the unit tests check when alerts fire and with
    # which labels, so they run on a copy without annotations.
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = _promtool("test", "rules", str(tmp_path / UNIT_TESTS.name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_a_broken_expectation_fails(tmp_path: Path) -> None:
    """The unit tests can fail: expecting an alert that does not fire is reported."""
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["tests"] = tests["tests"][:1]
    tests["tests"][0]["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"pool": "zz"}}]
    (tmp_path / "broken.test.yaml").write_text(yaml.safe_dump(tests))
    proc = _promtool("test", "rules", str(tmp_path / "broken.test.yaml"))
    assert proc.returncode != 0


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", ()):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_required_alerts_exist_with_runbooks() -> None:
    alerts = {rule["alert"]: rule for rule in _alerts()}
    for name in (
        "MailsluiceBounceRateHigh",
        "MailsluiceComplaintRateWarning",
        "MailsluiceComplaintRateCritical",
        "MailsluiceDeferralSpike",
        "MailsluiceQueueLagGrowing",
        "MailsluiceNoDeliveriesWithLag",
        "MailsluiceWarmupCapReachedEarly",
        "MailsluiceIngestRejecting451",
        "MailsluiceOperatorReconcileFailing",
    ):
        assert name in alerts
    assert "> 0.003" in alerts["MailsluiceComplaintRateCritical"]["expr"]
    assert "> 0.001" in alerts["MailsluiceComplaintRateWarning"]["expr"]
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        # kube-prometheus' annotations (tests/observability/test_runbooks.py checks the pages)
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name


def test_chart_embeds_the_rule_file() -> None:
    template = (CHART / "templates" / "monitoring.yaml").read_text()
    assert '.Files.Get "rules/mailsluice.rules.yaml"' in template


def test_alerts_use_only_catalogued_metrics() -> None:
    """Every mailsluice_* metric an alert reads is in docs/metrics.md (which tests/
    test_metrics_doc.py keeps equal to the metrics the code registers)."""
    catalogue = (ROOT / "docs" / "metrics.md").read_text()
    known = set(re.findall(r"^## `(mailsluice_\w+)`", catalogue, re.M))
    assert len(known) > 20
    unknown = set()
    for rule in _alerts():
        for name in re.findall(r"\bmailsluice_\w+", rule["expr"]):
            if re.sub(r"_(bucket|sum|count)$", "", name) not in known and name not in known:
                unknown.add((rule["alert"], name))
    assert unknown == set()


def test_complaint_alerts_read_the_ingest_complaints() -> None:
    alerts = {rule["alert"]: rule for rule in _alerts()}
    for name in ("MailsluiceComplaintRateWarning", "MailsluiceComplaintRateCritical"):
        assert "mailsluice_ingest_complaints_total" in alerts[name]["expr"], name
