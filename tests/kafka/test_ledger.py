"""The offset ledger: commit only up to the lowest unfinished offset."""

from __future__ import annotations

import random

import pytest

from mailsluice.kafka.ledger import Ledger, PartitionLedger


def test_empty_ledger_has_nothing_to_commit() -> None:
    part = PartitionLedger()
    assert part.committable() is None
    assert part.needs_commit() is None


def test_in_order_finishes_move_the_offset() -> None:
    part = PartitionLedger()
    for off in range(3):
        part.add(off)
    assert part.committable() == 0
    part.finish(0)
    assert part.committable() == 1
    part.finish(1)
    part.finish(2)
    assert part.committable() == 3  # last finished + 1


def test_out_of_order_finish_never_passes_an_unfinished_offset() -> None:
    part = PartitionLedger()
    for off in (10, 11, 12, 13):
        part.add(off)
    part.finish(12)
    part.finish(13)
    assert part.committable() == 10
    part.finish(11)
    assert part.committable() == 10
    part.finish(10)
    assert part.committable() == 14


def test_gaps_in_offsets_are_skipped() -> None:
    # Compacted topics and transaction markers leave gaps; the next commit is past the last seen.
    part = PartitionLedger()
    part.add(5)
    part.add(9)
    part.finish(9)
    assert part.committable() == 5
    part.finish(5)
    assert part.committable() == 10


def test_adding_after_all_finished() -> None:
    part = PartitionLedger()
    part.add(0)
    part.finish(0)
    part.add(1)
    assert part.committable() == 1
    part.finish(1)
    assert part.committable() == 2


def test_finish_of_unknown_offset_raises_and_double_add_raises() -> None:
    part = PartitionLedger()
    part.add(1)
    with pytest.raises(KeyError):
        part.finish(2)
    with pytest.raises(ValueError, match="already in flight"):
        part.add(1)
    part.finish(1)
    with pytest.raises(KeyError):
        part.finish(1)


def test_needs_commit_only_when_moved() -> None:
    part = PartitionLedger()
    part.add(0)
    part.add(1)
    assert part.needs_commit() == 0
    part.mark_committed(0)
    assert part.needs_commit() is None
    part.finish(0)
    assert part.needs_commit() == 1


def test_randomised_against_a_model() -> None:
    rng = random.Random(7)
    part = PartitionLedger()
    pending: set[int] = set()
    seen = -1
    for off in range(2000):
        if rng.random() < 0.1:
            continue  # gap
        part.add(off)
        pending.add(off)
        seen = off
        while pending and rng.random() < 0.5:
            done = rng.choice(sorted(pending))
            part.finish(done)
            pending.remove(done)
        expected = min(pending) if pending else seen + 1
        assert part.committable() == expected
        assert part.in_flight() == len(pending)


def test_ledger_revocation_ignores_late_finishes() -> None:
    ledger = Ledger()
    ledger.add("p0", 0)
    ledger.add("p0", 1)
    ledger.add("p1", 0)
    assert ledger.finish("p0", 1)
    assert ledger.to_commit() == {"p0": 0, "p1": 0}
    ledger.committed({"p0": 0, "p1": 0})
    assert ledger.to_commit() == {}
    ledger.revoke(["p0"])
    assert not ledger.owns("p0")
    assert not ledger.finish("p0", 0)  # the send finished after the partition went away
    assert ledger.finish("p1", 0)
    assert ledger.to_commit() == {"p1": 1}
    assert ledger.in_flight() == 0
    # Reassigned later: a fresh ledger, starting from what the next fetch brings.
    ledger.add("p0", 1)
    assert ledger.to_commit() == {"p0": 1, "p1": 1}


def test_to_commit_within_keeps_only_partitions_still_assigned() -> None:
    ledger = Ledger()
    for tp in ("p0", "p1", "p2"):
        ledger.add(tp, 0)
        assert ledger.finish(tp, 0)
    assert ledger.to_commit_within(["p0", "p1"]) == {"p0": 1, "p1": 1}
    assert ledger.to_commit_within(["p0", "p1"], only=["p1", "p2"]) == {"p1": 1}
    assert ledger.to_commit_within([]) == {}
