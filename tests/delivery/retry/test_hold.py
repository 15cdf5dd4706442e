"""The retry mover's decisions without Kafka: due order, commits, resume and retry-now, memory
bound."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from mailsluice.contracts.control import Command, RetryCount, command_key, encode_command
from mailsluice.contracts.envelope import (
    ENVELOPE_HEADER,
    Envelope,
    encode_envelope,
    envelope_from_headers,
)
from mailsluice.contracts.topics import queue_topic
from mailsluice.delivery.retry.control import ReleaseFollower
from mailsluice.delivery.retry.hold import (
    Held,
    RetryHold,
    held_from_record,
    moved_headers,
    released_envelope,
)
from mailsluice.delivery.retry.mover import RetryMover
from mailsluice.delivery.retry.report import retry_status
from mailsluice.delivery.retry.settings import RetryMoverSettings
from mailsluice.kafka.settings import KafkaSettings
from mailsluice.metrics.retry import retry_backlog

TP = TopicPartition("mailsluice.retry.1m", 0)
TP2 = TopicPartition("mailsluice.retry.10m", 3)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def held(offset: int, due: float, tp: Any = TP, key: str = "d.example", **kw: Any) -> Held:
    kw.setdefault("written", 900.0)
    return Held(tp, offset, due, queue_topic("p"), kw.pop("pool", "p"), key, **kw)


def offsets(items: list[Held]) -> list[int]:
    return [h.offset for h in items]


def test_records_leave_in_due_order_not_offset_order() -> None:
    clock = Clock()
    hold = RetryHold()
    hold.add(held(0, clock.now + 60))  # deferred for a minute...
    hold.add(held(1, clock.now + 5))  # ...then one throttled for 5 s: must not wait behind it
    hold.add(held(2, clock.now + 30))
    assert hold.next_due() == clock.now + 5
    clock.now += 4.9
    assert hold.take_due(clock()) == []
    clock.now += 0.1
    assert offsets(hold.take_due(clock())) == [1]
    clock.now += 25
    assert offsets(hold.take_due(clock())) == [2]
    clock.now += 30
    assert offsets(hold.take_due(clock())) == [0]
    assert hold.next_due() is None


def test_commit_stops_at_the_lowest_offset_not_moved() -> None:
    clock = Clock()
    hold = RetryHold()
    for offset, wait in ((10, 60), (11, 5), (12, 5)):
        hold.add(held(offset, clock.now + wait))
    assert hold.to_commit() == {TP: 10}  # where the partition was
    hold.committed({TP: 10})
    clock.now += 5
    moving = hold.take_due(clock())
    assert offsets(moving) == [11, 12]
    # Not acknowledged yet: nothing moves the commit point.
    assert hold.to_commit() == {}
    for h in moving:
        assert hold.done(h)
    assert hold.to_commit() == {}  # offset 10 still waits: the commit stays before it
    assert hold.first_unmoved(TP) == 10
    clock.now += 55
    (last,) = hold.take_due(clock())
    hold.done(last)
    assert hold.to_commit() == {TP: 13}
    assert hold.first_unmoved(TP) is None
    assert hold.count() == 0


def test_a_failed_move_is_held_again_and_retried() -> None:
    clock = Clock()
    hold = RetryHold()
    hold.add(held(0, clock.now))
    hold.add(held(1, clock.now))
    first = hold.take_due(clock())
    hold.put_back(first)
    assert hold.to_commit() == {TP: 0}  # not past the failed ones
    again = hold.take_due(clock())
    assert offsets(again) == [0, 1]
    for h in again:
        hold.done(h)
    assert hold.to_commit() == {TP: 2}


def test_partitions_are_independent() -> None:
    clock = Clock()
    hold = RetryHold()
    hold.add(held(0, clock.now + 100, tp=TP))
    hold.add(held(7, clock.now + 1, tp=TP2))
    clock.now += 1
    (moving,) = hold.take_due(clock())
    hold.done(moving)
    assert hold.to_commit() == {TP: 0, TP2: 8}
    assert hold.counts() == {TP: 1, TP2: 0}


def test_undecodable_records_are_finished_at_once() -> None:
    hold = RetryHold()
    junk = Held(TP, 0, 0.0, None)
    hold.add(junk)
    hold.add(held(1, 5000.0))
    (taken,) = hold.take_due(0.0)
    assert taken is junk
    hold.done(taken)
    assert hold.to_commit() == {TP: 1}  # past the junk, not past the held record


def test_a_record_fetched_twice_is_held_once() -> None:
    hold = RetryHold()
    assert hold.add(held(3, 1.0))
    assert not hold.add(held(3, 1.0))
    assert hold.count() == 1


def test_retry_now_releases_held_records_of_that_destination_only() -> None:
    clock = Clock()
    hold = RetryHold()
    hold.add(held(0, clock.now + 600, key="slow.example", written=clock.now - 10))
    hold.add(held(1, clock.now + 600, key="other.example", written=clock.now - 10))
    hold.add(held(2, clock.now + 600, key="slow.example", pool="q", written=clock.now - 10))
    hold.add(held(3, clock.now + 600, key="google#2", written=clock.now - 10))
    # Deferred after the command: the operator did not ask for this one.
    hold.add(held(4, clock.now + 600, key="slow.example", written=clock.now + 5))
    assert hold.release("p", "slow.example", before=clock.now) == 1
    assert hold.release("p", "google", before=clock.now) == 1  # a provider covers its shards
    assert hold.release("p", "slow.example", before=clock.now - 1) == 0  # an older command
    taken = hold.take_due(clock())
    assert sorted(offsets(taken)) == [0, 3]
    assert all(h.released for h in taken)
    assert hold.next_due() == clock.now + 600


def test_retry_now_also_covers_records_fetched_later() -> None:
    """A paused partition's records arrive after the command (or after a restart replays it)."""
    clock = Clock()
    hold = RetryHold()
    assert hold.release("p", "slow.example", before=clock.now) == 0
    hold.add(held(0, clock.now + 600, key="slow.example", written=clock.now - 1))
    hold.add(held(1, clock.now + 600, key="slow.example", written=clock.now + 1))
    assert offsets(hold.take_due(clock())) == [0]


def test_resume_releases_shaping_holds_and_retry_now_everything() -> None:
    clock = Clock()
    hold = RetryHold()
    before = clock.now - 10
    hold.add(held(0, clock.now + 7200, shaping="suspended", written=before))
    hold.add(held(1, clock.now + 300, written=before))  # a failure retry: tried, 4xx
    hold.add(held(2, clock.now + 60, shaping="throttled", written=before))
    hold.add(held(3, clock.now + 3600, shaping="warmup", key="google#1", written=before))
    hold.add(held(4, clock.now + 7200, shaping="suspended", written=clock.now + 1))  # after
    hold.add(held(5, clock.now + 7200, shaping="suspended", key="other.example", written=before))
    assert hold.release("p", "d.example", before=clock.now, shaped_only=True) == 2
    assert hold.release("p", "google", before=clock.now, shaped_only=True) == 1
    assert sorted(offsets(hold.take_due(clock()))) == [0, 2, 3]
    # the failure retry keeps its schedule until a retry-now, which also takes it
    assert hold.next_due() == clock.now + 300
    assert hold.release("p", "d.example", before=clock.now, shaped_only=True) == 0  # again
    assert hold.release("p", "d.example", before=clock.now) == 1
    (retry,) = hold.take_due(clock())
    assert retry.offset == 1 and retry.released
    assert hold.next_due() == clock.now + 7200  # written after the commands, another key


def test_resume_also_covers_shaping_holds_fetched_later() -> None:
    clock = Clock()
    hold = RetryHold()
    assert hold.release("p", "d.example", before=clock.now, shaped_only=True) == 0
    hold.add(held(0, clock.now + 600, shaping="blocked", written=clock.now - 1))
    hold.add(held(1, clock.now + 600, written=clock.now - 1))
    hold.add(held(2, clock.now + 600, shaping="blocked", written=clock.now + 1))
    assert offsets(hold.take_due(clock())) == [0]
    hold.release("p", "d.example", before=clock.now)  # a retry-now after the resume
    assert offsets(hold.take_due(clock())) == [1]


def tier_record(env: Envelope, offset: int = 5, timestamp: int = 1_700_000_000_000) -> Any:
    headers = [("trace", b"t1"), (ENVELOPE_HEADER, encode_envelope(env))]
    return SimpleNamespace(
        offset=offset, headers=headers, timestamp=timestamp, key=b"d.example", value=b"m"
    )


def tier_env(**kw: Any) -> Envelope:
    fields: dict[str, Any] = {
        "queue_id": "Q1",
        "pool": "p",
        "sender": "s@x.example",
        "recipients": ("a@d.example",),
        "routing_key": "d.example",
        "received_at": 1.0,
        "attempt": 2,
        "not_before": 1_700_007_200.0,
    }
    return Envelope(**{**fields, **kw})


def copy_of(h: Held, now: float) -> tuple[Envelope, list[tuple[str, bytes]]]:
    headers = moved_headers(h, now)
    assert headers[0] == ("trace", b"t1")  # other headers travel unchanged
    return envelope_from_headers(headers), headers


def test_a_released_copy_is_due_at_once_and_no_longer_held() -> None:
    now = 1_700_000_100.0
    throttled = tier_env(held="suspended", last_error="suspended by operator until 12:00")
    failed = tier_env(queue_id="Q2", last_error="452 4.2.2 Mailbox full")
    hold = RetryHold()
    for offset, env in enumerate((throttled, failed)):
        h = held_from_record(TP, tier_record(env, offset))
        assert h.shaping == env.held
        hold.add(h)
    # moved when due, a record travels as it is
    on_time = hold.take_due(throttled.not_before)
    assert moved_headers(on_time[0], now) == list(on_time[0].record.headers)
    hold.put_back(on_time)
    hold.release("p", "d.example", before=now)
    shaped, retried = sorted(hold.take_due(now), key=lambda h: h.offset)
    env, _ = copy_of(shaped, now)
    assert (env.not_before, env.held, env.last_error) == (now, "", "")
    assert env.attempt == 2 and env.recipients == throttled.recipients  # never tried: same
    env, _ = copy_of(retried, now)
    assert (env.not_before, env.held, env.last_error) == (now, "", "452 4.2.2 Mailbox full")
    assert released_envelope(failed, now).queue_id == "Q2"


def test_pause_at_the_bound_and_resume_at_half() -> None:
    clock = Clock()
    hold = RetryHold(high=4)
    assert hold.low == 2
    for offset in range(3):
        hold.add(held(offset, clock.now + offset))
    assert hold.flow() == ([], [])
    hold.add(held(3, clock.now + 3))
    assert hold.flow() == ([TP], [])
    assert hold.flow() == ([], [])  # paused once
    assert hold.paused() == {TP}
    (first,) = hold.take_due(clock())
    hold.done(first)
    assert hold.flow() == ([], [])  # 3 held: not yet down to 2 (hysteresis)
    clock.now += 1
    (second,) = hold.take_due(clock())
    hold.done(second)
    assert hold.flow() == ([], [TP])
    assert hold.paused() == set()


def test_all_partitions_pause_at_the_byte_bound() -> None:
    clock = Clock()
    hold = RetryHold(high=100, high_bytes=100)
    hold.add(held(0, clock.now, size=40))
    hold.add(held(0, clock.now + 9, tp=TP2, size=40))
    assert hold.flow() == ([], [])
    hold.add(held(1, clock.now + 9, size=40))
    assert hold.bytes() == 120
    assert set(hold.flow()[0]) == {TP, TP2}
    (moving,) = hold.take_due(clock())
    hold.done(moving)
    assert hold.flow() == ([], [])  # 80 bytes: not yet down to half
    clock.now += 9
    for h in hold.take_due(clock())[:1]:
        hold.done(h)
    assert hold.bytes() == 40
    assert set(hold.flow()[1]) == {TP, TP2}


def test_revoke_drops_held_records_and_late_finishes() -> None:
    clock = Clock()
    hold = RetryHold(high=1)
    hold.add(held(0, clock.now))
    hold.add(held(1, clock.now + 50))
    hold.add(held(0, clock.now + 50, tp=TP2))
    assert set(hold.flow()[0]) == {TP, TP2}
    (moving,) = hold.take_due(clock())
    hold.done(moving)
    assert hold.to_commit(only=[TP]) == {TP: 1}  # what the mover commits before dropping
    assert hold.revoke([TP]) == 1
    assert hold.counts() == {TP2: 1}
    assert hold.paused() == {TP2}
    assert not hold.done(held(1, 0.0))  # a move finishing after revocation counts nothing
    assert hold.to_commit() == {TP2: 0}


def record(headers: Any, offset: int = 5, timestamp: int = 1_700_000_000_000) -> Any:
    return SimpleNamespace(
        offset=offset, headers=headers, timestamp=timestamp, key=b"k", value=None
    )


def test_held_from_record_reads_the_envelope() -> None:
    env = Envelope(
        queue_id="Q1",
        pool="bulk1",
        sender="",
        recipients=("a@x.example",),
        routing_key="x.example",
        received_at=1.0,
        not_before=1234.5,
    )
    rec = record([(ENVELOPE_HEADER, encode_envelope(env))])
    h = held_from_record(TP, rec)
    assert (h.offset, h.due, h.topic, h.pool, h.key) == (
        5,
        1234.5,
        queue_topic("bulk1"),
        "bulk1",
        "x.example",
    )
    assert h.written == 1_700_000_000.0
    assert h.size == len(rec.headers[0][1]) + 1
    assert h.record is rec
    bad = held_from_record(TP, record([(ENVELOPE_HEADER, b"{not json")]))
    assert bad.topic is None
    assert held_from_record(TP, record(None)).topic is None


def test_follower_hands_over_resume_and_retry_now_commands_only() -> None:
    seen: list[Command] = []
    follower = ReleaseFollower(SimpleNamespace(), seen.append)  # type: ignore[arg-type]
    for action in ("suspend", "retry-now", "resume"):
        cmd = Command("p", "slow.example", action, ts=100.0)  # type: ignore[arg-type]
        follower.apply(command_key("p", "slow.example"), encode_command(cmd))
    follower.apply(command_key("p", "slow.example"), None)  # a tombstone
    follower.apply(command_key("p", "x"), b"{garbage")  # skipped, not fatal
    follower.apply(b"status/p/w1", None)
    assert [(c.action, c.key, c.ts) for c in seen] == [
        ("retry-now", "slow.example", 100.0),
        ("resume", "slow.example", 100.0),
    ]


def test_mover_applies_resume_and_retry_now_and_reports_backlog() -> None:
    mover = RetryMover(
        SimpleNamespace(),  # type: ignore[arg-type]
        settings=RetryMoverSettings(max_held=10, follow_control=False),
    )
    now = time.time()
    mover.hold.add(held(3, now + 600, key="slow.example", written=now - 5, shaping="blocked"))
    mover.hold.add(held(4, now + 600, key="slow.example", written=now - 5))
    mover.hold.add(held(5, now + 1, key="fast.example", written=now - 5))
    mover.on_command(Command("p", "slow.example", "resume", ts=now))
    assert offsets(mover.hold.take_due(now)) == [3]
    mover.on_command(Command("p", "slow.example", "retry-now", ts=now))
    assert offsets(mover.hold.take_due(now)) == [4]
    assert mover.waiting() == 3
    # metrics.retry_backlog reads the first unmoved record of each partition
    mover.consumer = SimpleNamespace(  # type: ignore[assignment]
        assignment=lambda: [TP], highwater=lambda _tp: 20
    )
    assert retry_backlog(mover) == {"1m": 17}  # offsets 3 to 19
    mover._export()
    assert REGISTRY.get_sample_value("mailsluice_retry_mover_held_records", {"tier": "1m"}) == 3
    assert REGISTRY.get_sample_value("mailsluice_retry_mover_held_records", {"tier": "1h"}) == 0
    ok, detail = mover.ready()
    assert not ok and "assignment" in detail
    mover.on_assigned([TP])
    assert mover.ready()[0]
    mover._kafka_error = "unreachable (KafkaConnectionError)"  # what the probe sets
    assert mover.ready() == (False, "retry mover: Kafka unreachable (KafkaConnectionError)")


def test_settings_reject_a_zero_bound() -> None:
    with pytest.raises(ValueError):
        RetryMoverSettings(max_held=0)
    with pytest.raises(ValueError):
        RetryHold(high=0)


def test_a_mover_with_an_overdue_record_and_no_moves_fails_liveness() -> None:
    clock = {"wall": 10_000.0}
    mover = RetryMover(
        KafkaSettings(bootstrap="127.0.0.1:9"),
        wall=lambda: clock["wall"],
        settings=RetryMoverSettings(stall_s=600.0, follow_control=False),
    )
    mover.progress.clock = lambda: clock["wall"]
    mover.hold.add(held(0, due=clock["wall"] + 30))
    assert mover.progress.check()[0]  # not due yet: no work
    clock["wall"] += 120  # overdue by 90 s: work, the clock starts
    assert mover.progress.check()[0]
    clock["wall"] += 601
    alive, detail = mover.progress.check()
    assert not alive and "no progress" in detail


def test_counts_per_destination_split_shaping_holds_from_failure_retries() -> None:
    hold = RetryHold(high=4)
    hold.add(held(0, 2000.0, shaping="suspended"))
    hold.add(held(1, 2000.0, shaping="warmup"))
    hold.add(held(2, 2000.0))  # a failure retry
    hold.add(held(3, 2000.0, key="e.example", pool="q"))
    hold.add(Held(TP, 4, 0.0, None))  # undecodable: counted nowhere
    assert hold.by_destination() == {("p", "d.example"): (2, 1), ("q", "e.example"): (0, 1)}
    status = retry_status(hold, "m", 5.0, 2.0)
    assert status.counts == (RetryCount("p", "d.example", 2, 1), RetryCount("q", "e.example", 0, 1))
    assert not status.partial
    hold.flow()  # five records on a partition bounded at four: paused, so counts are partial
    assert retry_status(hold, "m", 5.0, 2.0).partial
    due = hold.take_due(2000.0)  # being moved: due, no longer waiting
    assert len(due) == 5 and hold.by_destination() == {}
