"""The pure parts of `make bench`'s campaign stage (scripts/bench_campaign.py): the campaign's
split and order, the simulator's limits, the source-address setting, and the figures, table and
JSON made from the simulator's summary rows (hand-made rows here; no test runs the stage)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from pydantic.fields import FieldInfo
from support.provider_sim import ProviderSummary
from support.scripts import script

campaign = script("bench_campaign_plan")
NAMES = [d.name for d in campaign.DESTINATIONS]


def test_the_split_is_the_issue_s_and_adds_up():
    assert campaign.split(campaign.MIN_RECIPIENTS)["isp-two"] == 1
    assert campaign.split(3000) == {
        "google": 1200,
        "yahoo": 600,
        "microsoft": 600,
        "isp-one": 300,
        "isp-two": 300,
    }
    for total in (10, 13, 599, 600, 601, 2999):
        counts = campaign.split(total)
        assert sum(counts.values()) == total
        assert all(counts[name] >= 1 for name in NAMES)


def test_recipients_are_unique_interleaved_and_the_same_every_run():
    recipients = campaign.recipients(600)
    assert recipients == campaign.recipients(600)
    assert len({address for _, address in recipients}) == 600
    assert Counter(name for name, _ in recipients) == Counter(campaign.split(600))
    domains = {d.name: d.domain for d in campaign.DESTINATIONS}
    assert all(address.endswith("@" + domains[name]) for name, address in recipients)
    first_fifty = {name for name, _ in recipients[:50]}
    assert first_fifty == set(NAMES)  # not sent provider after provider


def test_a_sender_that_knew_the_limits_finishes_in_about_ten_minutes():
    counts = campaign.split(3000)
    ideal = {d.name: d.ideal_seconds(counts[d.name], 1) for d in campaign.DESTINATIONS}
    assert 540 <= max(ideal.values()) <= 660
    # two source addresses halve it (each has its own bucket at the provider)
    two = max(d.ideal_seconds(counts[d.name], 2) for d in campaign.DESTINATIONS)
    assert two == pytest.approx(max(ideal.values()) / 2, rel=0.05)
    quick = campaign.split(campaign.QUICK.recipients)
    assert max(d.ideal_seconds(quick[d.name], 1) for d in campaign.DESTINATIONS) < (
        campaign.QUICK.budget_s / 4
    )


def test_every_destination_has_its_own_server_and_texts_without_bounces():
    hosts = [d.host for d in campaign.DESTINATIONS]
    assert len(set(hosts)) == len(hosts)
    assert not set(hosts) & set(campaign.DEFAULT_SOURCES)
    for dest in campaign.DESTINATIONS:
        limits = dest.limits()
        assert limits.block_s >= 180  # several minutes
        assert limits.penalty_deferrals > 0


def test_the_source_setting_follows_the_installed_code():
    sources = ("127.0.0.41", "127.0.0.42")
    old = {"source_address": FieldInfo(annotation=str)}
    assert campaign.source_setting(old, sources) == (
        "MAILSLUICE_OUTBOUND_SOURCE_ADDRESS",
        "127.0.0.41",
        1,
    )
    listed = {"source_addresses": FieldInfo(annotation=tuple[str, ...])}
    assert campaign.source_setting(listed, sources) == (
        "MAILSLUICE_OUTBOUND_SOURCE_ADDRESSES",
        "127.0.0.41,127.0.0.42",  # comma-separated, as the setting reads it
        2,
    )


# --------------------------------------------------------------------------- figures


def row(name: str, delivered: int, span: float, ideal: float, **kw: Any) -> ProviderSummary:
    fields = {"attempts": delivered, "deferred": 0, "blocks": 0, "refusals": 0, **kw}
    return ProviderSummary(name, delivered, span, ideal, **fields)


PLANNED = {"google": 4, "yahoo": 2, "microsoft": 2, "isp-one": 1, "isp-two": 1}


def summary(**changes: ProviderSummary) -> list[ProviderSummary]:
    rows = {name: row(name, PLANNED[name], 10.0, 9.0) for name in NAMES}
    rows.update(changes)
    delivered = sum(r.delivered for r in rows.values())
    total = row(
        "overall",
        delivered,
        12.0,
        9.0,
        attempts=sum(r.attempts for r in rows.values()),
        deferred=sum(r.deferred for r in rows.values()),
        blocks=sum(r.blocks for r in rows.values()),
    )
    return [*rows.values(), total]


def outcome(**kw: Any) -> Any:
    fields: dict[str, Any] = {
        "planned": PLANNED,
        "done": PLANNED,
        "bounced": {},
        "first_at": dict.fromkeys(NAMES, 100.0),
        "stopped_at": 500.0,
        "sources": 1,
        **kw,
    }
    return campaign.Outcome(**fields)


def test_a_finished_campaign_takes_the_simulator_s_span_and_ideal():
    rows = campaign.figures(summary(), outcome())
    assert [f.provider for f in rows] == [*NAMES, "overall"]
    google, overall = rows[0], rows[-1]
    assert google.finished and overall.finished
    assert (google.ideal_s, google.span_s, google.efficiency) == (9.0, 10.0, pytest.approx(0.9))
    assert overall.span_s == 12.0 and overall.ideal_s == 9.0  # the slowest provider's ideal
    assert overall.efficiency == pytest.approx(0.75)


def test_an_unfinished_provider_is_judged_on_all_its_mail_up_to_the_stop():
    # isp-two delivered its burst at once and was then blocked: the simulator's own figure
    # would be 1.0 (no span); here it is its whole ideal over first delivery .. stop
    planned = {**PLANNED, "isp-two": 60}
    rows = campaign.figures(
        summary(**{"isp-two": row("isp-two", 3, 0.0, 0.0, blocks=1)}),
        outcome(planned=planned, done={**PLANNED, "isp-two": 3}, stopped_at=700.0),
    )
    isp_two, overall = rows[-2], rows[-1]
    isp = next(d for d in campaign.DESTINATIONS if d.name == "isp-two")
    assert not isp_two.finished and not overall.finished
    assert isp_two.span_s == 600.0
    assert isp_two.ideal_s == isp.ideal_seconds(60, 1)
    assert isp_two.efficiency == pytest.approx(isp.ideal_seconds(60, 1) / 600.0)
    assert overall.span_s == 600.0 and overall.ideal_s == isp_two.ideal_s
    assert overall.blocks == 1
    two_sources = campaign.figures(
        summary(**{"isp-two": row("isp-two", 3, 0.0, 0.0)}),
        outcome(planned=planned, done={**PLANNED, "isp-two": 3}, sources=2),
    )
    assert two_sources[-2].ideal_s == isp.ideal_seconds(60, 2) < isp_two.ideal_s


def test_bounces_count_as_done_and_a_provider_that_delivered_nothing_scores_zero():
    rows = campaign.figures(
        summary(microsoft=row("microsoft", 1, 0.0, 0.0), yahoo=row("yahoo", 0, 0.0, 0.0)),
        outcome(
            done={**PLANNED, "yahoo": 0},
            bounced={"microsoft": 1},
            first_at={n: 100.0 for n in NAMES if n != "yahoo"},
        ),
    )
    by_name = {f.provider: f for f in rows}
    assert by_name["microsoft"].finished and by_name["microsoft"].bounced == 1
    assert by_name["microsoft"].efficiency == 1.0  # one message: nothing to spread
    assert not by_name["yahoo"].finished
    assert (by_name["yahoo"].span_s, by_name["yahoo"].efficiency) == (None, 0.0)
    assert by_name["overall"].bounced == 1


def test_targets_and_table_report_misses_without_failing():
    deferred = row("google", 4, 10.0, 9.0, attempts=100, deferred=40, blocks=2)
    rows = campaign.figures(summary(google=deferred), outcome())
    overall = rows[-1]
    assert overall.deferral_pct == pytest.approx(100 * 40 / overall.attempts)
    targets = campaign.targets(overall)
    assert {k: t["met"] for k, t in targets.items()} == {
        "efficiency": False,
        "blocks": False,
        "deferral_pct": False,
    }
    lines = campaign.table(rows)
    assert len(lines) == 1 + len(rows) + 1
    assert lines[0].split()[:3] == ["provider", "limits", "planned"]
    assert lines[1].split()[0] == "google" and "600/min" in lines[1]
    assert "MISSED" in lines[-1] and "efficiency >= 0.85" in lines[-1]
    good = campaign.figures(summary(), outcome())
    good_rows = [replace(f, efficiency=0.9) if f.provider == "overall" else f for f in good]
    assert "MISSED" not in campaign.table(good_rows)[-1]


def test_an_unfinished_run_marks_its_efficiency_as_an_upper_bound():
    planned = {**PLANNED, "isp-one": 60}
    rows = campaign.figures(
        summary(**{"isp-one": row("isp-one", 5, 3.0, 0.0)}),
        outcome(planned=planned, done={**PLANNED, "isp-one": 5}),
    )
    isp_one_line = campaign.table(rows)[4]
    assert isp_one_line.split()[0] == "isp-one" and "<=" in isp_one_line
    assert not campaign.targets(rows[-1])["efficiency"]["met"]


def test_the_json_is_one_object_with_every_figure():
    rows = campaign.figures(summary(), outcome())
    result = campaign.result(rows, finished=True, injected=10)
    decoded = json.loads(json.dumps(result))
    assert decoded["finished"] is True and decoded["injected"] == 10
    assert set(decoded["providers"]) == set(NAMES)
    assert decoded["overall"]["efficiency"] == 0.75
    assert set(decoded["overall"]) >= {
        "delivered",
        "bounced",
        "ideal_s",
        "span_s",
        "efficiency",
        "deferral_pct",
        "blocks",
    }
    assert decoded["targets"]["blocks"] == {"target": "== 0", "value": 0, "met": True}


def test_delay_records_are_summed_by_cause_from_the_worker_metrics():
    text = (
        "# HELP mailsluice_delivery_retries_total Records sent to a retry delay topic.\n"
        "# TYPE mailsluice_delivery_retries_total counter\n"
        'mailsluice_delivery_retries_total{cause="throttled",pool="default",tier="1m"} 40.0\n'
        'mailsluice_delivery_retries_total{cause="throttled",pool="default",tier="10m"} 2.0\n'
        'mailsluice_delivery_retries_total{cause="failure",pool="default",tier="1m"} 3.0\n'
        'mailsluice_delivery_sent_total{pool="default"} 99.0\n'
    )
    assert campaign.delay_records(text) == {"throttled": 42.0, "failure": 3.0}
