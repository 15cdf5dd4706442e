"""The pure parts of the scale-out stage (scripts/bench_scale_plan.py): destinations spread
over the queue's partitions as the producer really partitions them, a worker's /metrics, and
one round's figures."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner, murmur2
from support.scripts import script

plan = script("bench_scale_plan")


def test_murmur2_is_kafkas_for_every_tail_length() -> None:
    rng = random.Random(18)
    samples = [b"", b"a", b"ab", b"abc", b"abcd", b"d000.scale.example"]
    samples += [rng.randbytes(rng.randrange(0, 40)) for _ in range(300)]
    for data in samples:
        # Java's is a signed int, aiokafka's copy the same bits unsigned.
        assert plan.murmur2(data) & 0xFFFFFFFF == murmur2(data) & 0xFFFFFFFF, data
        assert -(2**31) <= plan.murmur2(data) < 2**31


def test_murmur2_gives_the_java_clients_own_test_vectors() -> None:
    # Kafka's UtilsTest.testMurmur2: signed ints, as Utils.murmur2 returns them.
    vectors = {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
        "a-little-bit-longer-string": -1486304829,
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        "abc": 479470107,
    }
    assert {key: plan.murmur2(key.encode()) for key in vectors} == vectors


def test_the_domains_land_two_on_each_partition_as_the_producer_sends_them() -> None:
    domains = plan.spread_domains(24, 12)
    assert len(set(domains)) == 24
    partitions = list(range(12))
    # The key of a queue record is its routing key: the domain, for these (policy/rollup.py).
    landed = [DefaultPartitioner()(d.encode(), partitions, partitions) for d in domains]
    assert sorted(landed) == sorted(partitions * 2)
    assert plan.spread_domains(24, 12) == domains  # the same every run


def test_names_taken_in_order_would_not_have_spread() -> None:
    # Why spread_domains exists: the first 24 names leave partitions empty or crowded.
    names = [f"d{n:03d}.scale.example".encode() for n in range(24)]
    counts = [0] * 12
    for name in names:
        counts[plan.partition_of(name, 12)] += 1
    assert counts != [2] * 12


def test_attempts_are_read_from_a_workers_metrics() -> None:
    text = (
        "# HELP mailsluice_delivery_attempts_total Delivery attempts\n"
        "# TYPE mailsluice_delivery_attempts_total counter\n"
        'mailsluice_delivery_attempts_total{pool="default",result="delivered"} 2920.0\n'
        'mailsluice_delivery_attempts_total{pool="default",result="deferred"} 3.0\n'
        'mailsluice_delivery_attempts_total{pool="other",result="delivered"} 7.0\n'
        'mailsluice_delivery_attempts_created{pool="default",result="delivered"} 1.7e9\n'
        'mailsluice_delivery_recipients_total{pool="default",result="delivered"} 2920.0\n'
    )
    assert plan.attempts(text) == {"delivered": 2920, "deferred": 3}
    assert plan.attempts(text, "other") == {"delivered": 7}
    assert plan.attempts("") == {}


def test_a_rounds_figures() -> None:
    each = [
        plan.WorkerFigures(3.0, {"delivered": 2900, "deferred": 2}, 110.0),
        plan.WorkerFigures(3.0, {"delivered": 3100}, 120.0),
    ]
    figures = plan.round_figures(
        2, 6000, seconds=7.999, all_ready=(4800, 6.0), each=each, broker_cpu_s=1.2
    )
    assert figures["msgs_per_s"] == 750.0  # 5,999 intervals between first and last message
    assert figures["all_ready_msgs_per_s"] == 800.0
    assert figures["cpu_ms_per_msg"] == 1.0  # 6 s of workers over 6,000 messages
    assert figures["broker_cpu_ms_per_msg"] == 0.2
    assert figures["msgs_per_cpu_s"] == 1000.0
    assert figures["worker_core_share"] == [0.38, 0.38]
    assert figures["worker_messages"] == [2900, 3100]
    assert figures["worker_attempts_not_delivered"] == [2, 0]
    assert figures["worker_peak_rss_mb"] == [110.0, 120.0]
    lines = plan.round_lines(figures)
    assert lines[0].startswith("2 worker(s): 750.0 msg/s drained")
    assert "CPU 1.00 ms/msg (all workers)" in lines[0]
    assert lines[2] == ("  worker 2: 3100 messages, CPU 3.0 s (0.38 of a core), peak RSS 120.0 MB")


def test_a_worker_without_cpu_leaves_the_rounds_cpu_missing() -> None:
    each = [plan.WorkerFigures(None, {"delivered": 10}), plan.WorkerFigures(1.0)]
    figures = plan.round_figures(
        2, 10, seconds=None, all_ready=(0, 0.0), each=each, broker_cpu_s=None
    )
    assert figures["cpu_ms_per_msg"] is None and figures["msgs_per_cpu_s"] is None
    assert figures["msgs_per_s"] is None and figures["all_ready_msgs_per_s"] is None


def test_speedups_are_over_the_one_worker_round() -> None:
    rounds = [
        {"workers": 1, "msgs_per_s": 500.0},
        {"workers": 2, "msgs_per_s": 800.0},
        {"workers": 4, "msgs_per_s": None},
    ]
    assert plan.speedups(rounds) == {"1": 1.0, "2": 1.6, "4": None}
    assert plan.speedups(rounds[1:]) == {"2": None, "4": None}
