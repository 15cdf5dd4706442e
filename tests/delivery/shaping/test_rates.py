"""The rates a delivery worker keeps, on a simulated clock: the real scheduler and shaping engine
driven as the worker's dispatch loop drives them, deferred mail coming back through the delay
topics (support.shaping.SimulatedWorker).

- a destination limited to R messages/minute receives R +/- 5% per minute, within the GCRA
  envelope, while an unthrottled destination in the same worker runs at full speed;
- a destination handed over to another worker (a rebalance) keeps its rate with no burst;
- a 421 with a reputation text throttles the destination and the rate recovers afterwards;
- transactional mail overtakes a bulk backlog for the same destination.

tests/delivery/shaping/test_integration.py runs the first two with real Kafka in wall time.
"""

from __future__ import annotations

import time

import pytest
from aiokafka import TopicPartition
from support.scripts import script
from support.shaping import (
    BURST,
    RATE_PER_MIN,
    SimulatedWorker,
    limited_shaper,
    per_minute,
    worst_window,
)

from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.worker.attempts import Item, transactional

# The bench's own measure of what a destination received beyond its GCRA envelope.
shaping_figures = script("bench_shaping_figures")
RATE_PER_S = RATE_PER_MIN / 60


@pytest.mark.parametrize("return_s", [0.0, 1.0, 2.0])
def test_rate_holds_with_one_worker_and_free_destination_runs_full_speed(return_s: float) -> None:
    worker = SimulatedWorker(limited_shaper(), return_s=return_s)
    worker.enqueue("limited.example", range(1000))
    worker.enqueue("free.example", range(1500))
    worker.run_until(65)
    limited = worker.starts["limited.example"]
    free = worker.starts["free.example"]
    begin = limited[0]
    assert per_minute(limited, begin + 5, begin + 65) == pytest.approx(RATE_PER_MIN, rel=0.05)
    # the stated burst plus what the rate allows within the window, never more
    assert worst_window(limited, 1.0) <= BURST + RATE_PER_S
    assert shaping_figures.envelope_excess(limited, RATE_PER_S, BURST) == 0.0
    assert worker.deferred > 0  # the backlog went through the delay topics and came back
    # the free destination finished its 1500 at once, not at the limited rate
    assert len(free) == 1500
    assert sorted(free)[1499] < 1.0


def handover(*, prime_new: bool) -> tuple[list[float], float]:
    """1300 messages for the limited destination; after 50 s its worker stops and another one
    takes the backlog over at that same instant (the worst case: no rebalance pause)."""
    # A long horizon keeps the backlog in memory, as the wall-clock run does.
    first = SimulatedWorker(limited_shaper(prime_new=prime_new), horizon=150)
    first.enqueue("limited.example", range(1300))
    left = 50.0
    first.run_until(left)
    backlog = first.hand_back()
    first.run_until(left + 1.0)  # its sends under way end
    second = SimulatedWorker(limited_shaper(prime_new=prime_new), horizon=150, start=left)
    second.enqueue("limited.example", backlog)
    second.run_until(left + 40)
    starts = sorted(first.starts["limited.example"] + second.starts["limited.example"])
    assert len(set(first.sent) & set(second.sent)) == 0
    return starts, left


def test_rate_holds_across_a_handover_with_no_burst() -> None:
    limited, left = handover(prime_new=True)
    begin = limited[0]
    assert per_minute(limited, begin + 5, begin + 45) == pytest.approx(RATE_PER_MIN, rel=0.05)
    # through the handover the limit holds from above, with no burst
    for a in range(0, 40, 10):
        assert per_minute(limited, left + a, left + a + 10) <= RATE_PER_MIN * 1.05
    assert worst_window(limited, 1.0) <= BURST + RATE_PER_S
    assert shaping_figures.envelope_excess(limited, RATE_PER_S, BURST) == 0.0
    # the new owner sends at the limit at once
    assert next(t for t in limited if t > left) < left + 0.5
    assert per_minute(limited, left + 20, left + 40) == pytest.approx(RATE_PER_MIN, rel=0.05)


def test_a_new_owner_with_burst_credit_would_exceed_the_envelope() -> None:
    # What the shaper's priming of new destinations prevents (so the test above can fail).
    limited, _left = handover(prime_new=False)
    assert shaping_figures.envelope_excess(limited, RATE_PER_S, BURST) > 0.0


def item(n: int, stream: str) -> Item:
    env = Envelope(
        queue_id=f"q{n:04d}",
        pool="p",
        sender="s@origin.example",
        recipients=(f"r{n}@limited.example",),
        routing_key="limited.example",
        received_at=time.time(),
        stream=stream,
    )
    return Item(TopicPartition("mailsluice.queue.p", 0), n, 1, env, b"")


def test_transactional_mail_overtakes_bulk_on_a_limited_destination() -> None:
    worker = SimulatedWorker(limited_shaper(), urgent=transactional)
    worker.enqueue("limited.example", [item(n, "bulk") for n in range(150)])  # 15 s at 10/s
    worker.run_until(1.0)
    queued_at = worker.now
    worker.enqueue("limited.example", [item(1000 + n, "transactional") for n in range(5)])
    worker.run_until(7.0)
    tx = [t for t, it in worker.sent if it.env.stream == "transactional"]
    assert len(tx) == 5
    # the transactional messages went at the rate, ahead of the bulk backlog
    assert max(tx) - queued_at < 2.0
    assert max(tx) - queued_at <= 5 / RATE_PER_S + 1e-6  # the next five slots
    bulk_after = [t for t, it in worker.sent if it.env.stream == "bulk" and t > queued_at]
    assert bulk_after  # bulk went on too, after them
    assert min(bulk_after) > max(tx)
