"""Issue #18's targets block (scripts/bench_targets.py) and the CPU figures of the end-to-end
rounds (scripts/bench_e2e.py, bench_run.Report)."""

from __future__ import annotations

from typing import Any

import pytest
from support.scripts import script

targets = script("bench_targets")
e2e = script("bench_e2e")
run = script("bench_run")
smtp = script("bench_smtp")


def all_met() -> dict[str, Any]:
    return {
        "ratio_vs_postfix": 1.6,
        "cpu_ratio_vs_postfix": 0.5,
        "cpu_ratio_vs_postfix_with_broker": 0.66,
        "ingest_msgs_per_s": 2000.0,  # on the bound: >= is met
        "delivery_msgs_per_s": 2600.0,
        "e2e_p99_ms": 49.9,
        "latency": {"rate_per_s": 50.0},
        "peak_rss_mb_by_process": {"ingest": 300.0, "delivery": 150.0, "kafka": 900.0},
    }


def by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in rows}


def test_every_target_met_on_or_inside_its_bound() -> None:
    rows = targets.evaluate_all(all_met())
    assert [row["met"] for row in rows] == [True] * len(targets.TARGETS)
    assert by_name(rows)["RSS per delivery worker"]["measured"] == 150.0  # not ingest's 300
    assert targets.lines(rows)[-1] == f"  {len(rows)} of {len(rows)} met"


@pytest.mark.parametrize(
    ("key", "value", "name"),
    [
        ("ratio_vs_postfix", 1.49, "end to end vs Postfix, same run"),
        ("cpu_ratio_vs_postfix", 0.67, "CPU/msg vs Postfix, broker apart"),
        ("cpu_ratio_vs_postfix_with_broker", 1.2, "CPU/msg vs Postfix, broker included"),
        ("ingest_msgs_per_s", 1999.9, "ingest"),
        ("delivery_msgs_per_s", 900.0, "delivery drain to smtp-sink"),
        ("e2e_p99_ms", 50.0, "e2e p99 at 50 msg/s"),  # < 50: on the bound is not met
    ],
)
def test_a_figure_outside_its_bound_is_not_met(key: str, value: float, name: str) -> None:
    figures = {**all_met(), key: value}
    rows = by_name(targets.evaluate_all(figures))
    assert rows[name]["met"] is False
    assert sum(1 for row in rows.values() if row["met"] is False) == 1
    line = next(line for line in targets.lines(list(rows.values())) if name in line)
    assert line.endswith("NOT met")


def test_a_missing_figure_or_other_conditions_give_no_verdict() -> None:
    figures = all_met()
    figures["ingest_msgs_per_s"] = None
    figures["latency"] = {"rate_per_s": 100.0}
    figures["peak_rss_mb_by_process"] = None
    rows = by_name(targets.evaluate_all(figures))
    assert rows["ingest"]["met"] is None and rows["ingest"]["note"] == "no figure"
    assert rows["RSS per delivery worker"]["met"] is None
    p99 = rows["e2e p99 at 50 msg/s"]
    assert p99["met"] is None and p99["measured"] == 49.9  # measured at 100 msg/s
    assert "latency.rate_per_s = 100.0" in p99["note"]
    block = "\n".join(targets.lines(list(rows.values())))
    assert "n/a (no figure)" in block and "4 of 7 met" in block


def test_bounds_print_as_written() -> None:
    rows = by_name(targets.evaluate_all(all_met()))
    assert rows["CPU/msg vs Postfix, broker apart"]["target"] == "<= 0.667x"
    assert rows["ingest"]["target"] == ">= 2000 msg/s"
    assert rows["end to end vs Postfix, same run"]["target"] == ">= 1.5x"


# --------------------------------------------------------------------------- e2e CPU figures


def peer_result(rate: float) -> Any:
    return smtp.PeerResult(rate, rate, 3000, 3000 / rate, None, 3000)


def test_throughput_takes_the_best_round_and_cpu_the_median_round() -> None:
    report = run.Report()
    postfix = e2e.Contender("postfix", "127.0.0.20:25", {"postfix": [1]})
    postfix.results = [peer_result(500.0), peer_result(540.0), peer_result(520.0)]
    postfix.cpu = [{"postfix": 2.0}, {"postfix": 1.8}, {"postfix": 2.4}]
    ours = e2e.Contender("ours", "127.0.0.22:25", {"ours": [2, 3], "broker": [4]})
    ours.results = [peer_result(700.0), peer_result(650.0), peer_result(690.0)]
    ours.cpu = [
        {"ours": 1.0, "broker": 0.5},
        {"ours": 1.4, "broker": 0.4},
        {"ours": 1.2, "broker": None},
    ]
    e2e.summarise(postfix, report)
    e2e.summarise(ours, report)
    figures = report.finish()
    assert figures["postfix_msgs_per_s"] == 540.0
    assert figures["ours_e2e_msgs_per_s"] == 700.0
    assert figures["postfix_cpu_ms_per_msg"] == 2.0
    assert figures["ours_cpu_ms_per_msg"] == 1.2
    assert figures["broker_cpu_ms_per_msg_e2e"] == 0.45  # the rounds that have a figure
    assert figures["ours_with_broker_cpu_ms_per_msg_runs"] == [1.5, 1.8, None]
    assert figures["ours_with_broker_cpu_ms_per_msg"] == 1.65
    assert figures["cpu_ratio_vs_postfix"] == 0.6
    assert figures["cpu_ratio_vs_postfix_with_broker"] == 0.825
    assert figures["errors"] == []


def test_the_cpu_beside_a_throughput_line_names_what_counts() -> None:
    assert e2e.cpu_text({"postfix": 1.914}) == "CPU 1.91 ms/msg (postfix tree)"
    assert e2e.cpu_text({"ours": 1.0, "broker": 0.5}) == (
        "CPU 1.00 ms/msg (ingest + delivery), CPU 1.50 ms/msg (with the broker)"
    )
