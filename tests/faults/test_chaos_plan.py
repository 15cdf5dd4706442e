"""The pure parts of the fault run (scripts/chaos_plan.py): the seeded schedule of faults, and
the figures, verdict, table and JSON made from hand-made counts; and the command line of
scripts/chaos.py (no run here: tests/faults/test_fault_run.py makes one)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from support.scripts import script

plan = script("chaos_plan")
chaos = script("chaos")


def clean_ending(**changes: object) -> object:
    values: dict[str, object] = {
        "drain_s": 3.0,
        "queue_lag": 0,
        "liveness_restarts": 0,
        "faults": 8,
        "workers": 2,
        "workers_back": 2,
    }
    values.update(changes)
    return plan.Ending(**values)


def test_the_schedule_is_the_seed_s_and_has_every_fault_kind() -> None:
    config = plan.Config()
    faults = plan.schedule(config)
    assert faults == plan.schedule(config)
    assert faults != plan.schedule(replace(config, seed=13))
    kinds = Counter(f.kind for f in faults)
    assert kinds == {
        plan.WORKER_KILL: 5,
        plan.BROKER_RESTART: 1,
        plan.INGEST_KILL: 1,
        plan.WORKER_TERM: 1,
    }
    assert set(kinds) == set(plan.KINDS)


@pytest.mark.parametrize("seed", range(20))
def test_faults_are_inside_the_window_in_order_and_apart(seed: int) -> None:
    config = replace(plan.SUITE, seed=seed)
    faults = plan.schedule(config)
    start, end = (config.inject_s * edge for edge in plan.WINDOW)
    slot = (end - start) / len(faults)
    times = [f.at_s for f in faults]
    assert times == sorted(times)
    assert start <= times[0] and times[-1] <= end
    assert all(b - a >= slot / 2 - 0.01 for a, b in itertools.pairwise(times))


def test_no_worker_kills_still_makes_the_other_faults() -> None:
    faults = plan.schedule(replace(plan.SUITE, worker_kills=0))
    assert sorted(f.kind for f in faults) == sorted(
        [plan.BROKER_RESTART, plan.INGEST_KILL, plan.WORKER_TERM]
    )


def test_figures_count_loss_duplicates_and_late_deliveries_by_recipient() -> None:
    tally = plan.Tally(
        sent_to=set("abcdefgh"),
        accepted={"a", "b", "c", "d"},
        refused={"e": 451, "f": 451},
        unanswered={"g", "h"},
        retried={"c", "d", "e"},  # c and d accepted when sent again, e refused again
        received=Counter({"a": 1, "b": 3, "c": 2, "e": 1, "g": 1, "stranger": 1}),
    )
    fig = plan.figures(tally, clean_ending())
    assert (fig.accepted, fig.refused, fig.unanswered) == (4, 2, 2)
    assert fig.delivered == 3  # a, b, c
    assert fig.lost == 1  # d
    assert fig.duplicates == 3  # b twice more, c once more
    assert fig.duplicate_pct == 75.0
    assert fig.delivered_after_451 == 1  # e
    assert (fig.retried, fig.retried_duplicates) == (3, 1)  # c came twice
    assert fig.delivered_unanswered == 1  # g: reported, not a broken promise
    assert fig.unexpected == 1
    found = " | ".join(plan.problems(fig))
    for words in ("1 accepted messages lost", "duplicates 75.0%", "answered 4xx/5xx", "never sent"):
        assert words in found


def perfect(accepted: int = 1000, duplicates: int = 0) -> object:
    received = Counter({str(n): 1 for n in range(accepted)})
    received.update(str(n) for n in range(duplicates))
    everyone = {str(n) for n in range(accepted)}
    tally = plan.Tally(sent_to=everyone, accepted=set(everyone), received=received)
    return tally


def test_a_clean_run_has_no_problems_and_its_table_and_json_say_so() -> None:
    tally = perfect()
    fig = plan.figures(tally, clean_ending())
    assert plan.problems(fig) == []
    lines = plan.table(fig, ["worker-kill +7s"])
    text = "\n".join(lines)
    for row in ("accepted (250)", "lost", "duplicates", "delivered after 451", "drain time"):
        assert row in text
    assert "3.0 s" in text and "worker-kill +7s" in text
    out = json.loads(json.dumps(plan.result(fig, plan.SUITE, {"restarts": []})))
    assert out["stage"] == "chaos" and out["lost"] == 0 and out["problems"] == []
    assert out["config"]["messages"] == plan.SUITE.messages


def test_duplicates_fail_from_half_a_percent_of_accepted() -> None:
    under, at = perfect(1000, 4), perfect(1000, 5)
    assert plan.problems(plan.figures(under, clean_ending())) == []
    problems = plan.problems(plan.figures(at, clean_ending()))
    assert problems == ["duplicates 0.5% of accepted (limit 0.5%)"]


@pytest.mark.parametrize(
    ("ending", "problem"),
    [
        ({"drain_s": None}, "not drained within the budget"),
        ({"queue_lag": 3}, "queue lag 3 at the end"),
        ({"queue_lag": None}, "queue lag None at the end"),
        ({"workers_back": 1}, "only 1 of 2 workers back to work"),
    ],
)
def test_an_undrained_queue_or_a_worker_not_back_is_a_problem(
    ending: dict[str, object], problem: str
) -> None:
    tally = perfect(10)
    fig = plan.figures(tally, clean_ending(**ending))
    assert plan.problems(fig) == [problem]


def test_liveness_restarts_are_reported_not_failed() -> None:
    tally = perfect(10)
    fig = plan.figures(tally, clean_ending(liveness_restarts=2))
    assert plan.problems(fig) == []
    assert any("liveness restarts" in line and line.endswith("2") for line in plan.table(fig))


def test_recipients_are_unique_and_spread_over_the_destinations() -> None:
    addresses = [plan.recipient(n, "run1", 50) for n in range(1000)]
    assert len(set(addresses)) == 1000
    assert len({a.split("@")[1] for a in addresses}) == 50


def test_the_command_line_defaults_to_the_issue_s_run_and_suite_to_the_test_s() -> None:
    config, _ = chaos.parse_args([])
    assert config == plan.Config()
    assert (config.messages, config.rate, config.connections, config.destinations) == (
        20_000,
        70.0,
        8,
        50,
    )
    suite, _ = chaos.parse_args(["--suite"])
    assert suite == plan.SUITE
    short, _ = chaos.parse_args(["--suite", "--messages", "500", "--seed", "3"])
    assert short == replace(plan.SUITE, messages=500, seed=3)


def test_a_config_that_cannot_run_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        replace(plan.SUITE, rate=0).validate()
    with pytest.raises(ValueError, match="negative"):
        replace(plan.SUITE, worker_kills=-1).validate()


def test_a_value_given_on_the_command_line_wins_even_when_it_is_the_default() -> None:
    config, _ = chaos.parse_args(["--suite", "--messages", str(plan.Config().messages)])
    assert config.messages == plan.Config().messages
    assert config.rate == plan.SUITE.rate


class _Received:
    def __init__(self, *rcpt_tos: str) -> None:
        self.rcpt_tos = rcpt_tos


class _GrowingWhileRead(list):  # type: ignore[type-arg]
    """The MX's message list, which its own thread appends to while the run counts it: one
    message arrives the first time the list is read."""

    arrived = False

    def __getitem__(self, key: Any) -> Any:
        part = super().__getitem__(key)
        if not self.arrived:
            self.arrived = True
            self.append(_Received("late"))
        return part


def test_a_message_arriving_while_the_mx_is_counted_is_counted_next_time() -> None:
    mx = SimpleNamespace(messages=_GrowingWhileRead([_Received("a"), _Received("b")]))
    pipe = chaos.Pipeline("pool", None, [], 0, mx, "")
    tally = plan.Tally()
    pipe.tally_received(tally)
    pipe.tally_received(tally)
    assert tally.received == Counter({"a": 1, "b": 1, "late": 1})
