"""Pure parts of the operator: warm-up schedules and budgets, scaling decisions, conditions."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mailsluice_operator import scaling, status, warmup
from mailsluice_operator.problems import PermanentProblem, TemporaryProblem

# --- warm-up -------------------------------------------------------------------------------


def test_presets_are_the_workers_ramps() -> None:
    start = dt.date(2026, 1, 1)
    sg = warmup.schedule({"preset": "sendgrid-like"})
    assert warmup.state_on(sg, start, start) == warmup.WarmupState(1, 20 * 24)  # 20 an hour
    ses = warmup.schedule({"preset": "ses-45-day"})
    assert warmup.state_on(ses, start, start + dt.timedelta(days=44)) == warmup.WarmupState(
        45, 50_000
    )
    assert warmup.state_on(ses, start, start + dt.timedelta(days=45)) == warmup.WarmupState(
        46, None
    )
    assert warmup.state_on(ses, start, start - dt.timedelta(days=3)).day == 1
    assert warmup.schedule({"preset": "none"}) is None
    assert warmup.state_on(None, start, start + dt.timedelta(days=3)) == warmup.WarmupState(4, None)


def test_custom_table_holds_until_next_row() -> None:
    table = warmup.schedule({"table": [{"day": 5, "volume": 5000}, {"day": 1, "volume": 100}]})
    start = dt.date(2026, 1, 1)
    assert warmup.state_on(table, start, dt.date(2026, 1, 4)).cap == 100
    assert warmup.state_on(table, start, dt.date(2026, 1, 5)).cap == 5000
    assert warmup.state_on(table, start, dt.date(2026, 1, 6)).cap is None


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"preset": "yahoo-magic"}, "unknown warm-up preset"),
        ({"preset": "ses-45-day", "table": [{"day": 1, "volume": 1}]}, "not both"),
        ({"table": [{"day": 1, "volume": 1}, {"day": 1, "volume": 2}]}, "twice"),
        ({"table": [{"day": 0, "volume": 1}]}, "start at 1"),
    ],
)
def test_bad_warmup_specs_raise(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(warmup.WarmupError, match=needle):
        warmup.schedule(spec)


def test_start_date_defaults_to_creation_and_rejects_garbage() -> None:
    assert warmup.start_date({}, "2026-03-04T05:06:07Z") == dt.date(2026, 3, 4)
    assert warmup.start_date({"startDate": "2026-01-02"}, None) == dt.date(2026, 1, 2)
    with pytest.raises(warmup.WarmupError):
        warmup.start_date({"startDate": "soon"}, None)


def test_budget_workers() -> None:
    assert warmup.workers_for_budget(None, 0, 50) is None
    assert warmup.workers_for_budget(480, 0, 50) == 1
    assert warmup.workers_for_budget(480, 480, 50) == 0
    assert warmup.workers_for_budget(86400 * 500, 0, 50) == 10


# --- scaling -------------------------------------------------------------------------------


def _inputs(**kw: Any) -> scaling.ScaleInputs:
    base: dict[str, Any] = dict(
        lag=0, lag_per_worker=100, min_workers=1, max_workers=8, partitions=6
    )
    base.update(kw)
    return scaling.ScaleInputs(**base)


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({"lag": 0}, 1),
        ({"lag": 1}, 1),
        ({"lag": 101}, 2),
        ({"lag": 350}, 4),
        ({"lag": 10_000}, 6),  # never more than partitions
        ({"lag": 10_000, "partitions": 12}, 8),  # nor more than max
        ({"lag": 0, "min_workers": 0}, 0),
        ({"lag": 10_000, "budget_workers": 2}, 2),
        ({"lag": 10_000, "budget_workers": 0, "min_workers": 1}, 1),  # min still holds
        ({"lag": 10_000, "pinned": 3}, 3),
        ({"lag": 0, "pinned": 9}, 6),
    ],
)
def test_recommend_is_kedas_formula_within_bounds(kw: dict[str, Any], want: int) -> None:
    assert scaling.recommend(_inputs(**kw))[0] == want


def test_scale_up_is_immediate_and_down_waits_for_the_window() -> None:
    history: scaling.History = ()
    seen = []
    for t, lag in [(0, 500), (10, 0), (20, 0), (59, 0), (61, 0), (70, 800), (71, 0)]:
        decision, history = scaling.decide(_inputs(lag=lag), history, float(t), 60.0)
        seen.append(decision.replicas)
    assert seen == [5, 5, 5, 5, 1, 6, 6]
    assert all(t > 71 - 60 for t, _ in history)


def test_pinned_replicas_skip_stabilisation() -> None:
    decision, history = scaling.decide(_inputs(pinned=2), ((0.0, 6),), 1.0, 300.0)
    assert decision.replicas == 2 and history == ((1.0, 2),)


# --- conditions ----------------------------------------------------------------------------


def test_conditions_follow_health_and_keep_transition_times() -> None:
    healthy = status.conditions_for(status.Health(desired=2, ready=2, updated=2))
    first = status.merge_conditions(None, healthy, generation=3, now="T1")
    assert [(c["type"], c["status"], c["reason"]) for c in first] == [
        ("Ready", "True", "WorkersReady"),
        ("Reconciling", "False", "Reconciled"),
        ("Stalled", "False", "Progressing"),
    ]
    assert {c["observedGeneration"] for c in first} == {3}
    again = status.merge_conditions(first, healthy, generation=4, now="T2")
    assert [c["lastTransitionTime"] for c in again] == ["T1", "T1", "T1"]
    broken = status.conditions_for(
        status.Health(problem=TemporaryProblem("KafkaUnavailable", "down"))
    )
    after = status.merge_conditions(again, broken, generation=4, now="T3")
    assert [(c["status"], c["lastTransitionTime"]) for c in after] == [
        ("False", "T3"),
        ("False", "T1"),
        ("True", "T3"),
    ]
    assert (after[2]["reason"], after[2]["message"]) == ("KafkaUnavailable", "down")


def test_conditions_rolling_zero_and_shrink() -> None:
    rolling = status.conditions_for(status.Health(desired=3, ready=1, updated=1))
    assert (rolling[0].status, rolling[1].status, rolling[1].reason) == (
        True,
        True,
        "WorkersRolling",
    )
    assert status.conditions_for(status.Health(desired=0))[0].reason == "ScaledToZero"
    assert not status.conditions_for(status.Health(desired=1))[0].status
    shrink = status.conditions_for(
        status.Health(
            desired=1, ready=1, updated=1, warning=PermanentProblem("PartitionsShrinkRefused", "m")
        )
    )
    assert shrink[0].status and shrink[2].status and shrink[2].reason == "PartitionsShrinkRefused"
    assert shrink[2].message == "m"
