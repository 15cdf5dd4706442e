"""The pure parts of the scale-out stage (scripts/bench_scale.py): which destinations spread
evenly over the pool's partitions, what a worker's /metrics says it did, and one round's figures.

Standard library only; importable from tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import bench_cpu

# --------------------------------------------------------------------------- partitions


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Utils.murmur2 of the Java client, which aiokafka's default partitioner
    copies), as a signed 32-bit value."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    rest = data[whole:]
    if rest:
        for index in reversed(range(len(rest))):  # Java's switch falls through 3, 2, 1
            h ^= rest[index] << (8 * index)
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the default partitioner gives a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def spread_domains(count: int, partitions: int, suffix: str = "scale.example") -> list[str]:
    """`count` destination domains, count/partitions of them on each partition of the queue.

    A queue record's key is its routing key, which for a domain outside the provider rollup is
    the domain itself (policy/rollup.py), so the domain alone decides the partition; names
    taken in order would leave some partitions empty and others with three or four."""
    if count % partitions:
        raise ValueError(f"{count} domains do not spread evenly over {partitions} partitions")
    per_partition = count // partitions
    taken: dict[int, int] = {}
    domains: list[str] = []
    number = 0
    while len(domains) < count:
        domain = f"d{number:03d}.{suffix}"
        number += 1
        slot = partition_of(domain.encode(), partitions)
        if taken.get(slot, 0) < per_partition:
            taken[slot] = taken.get(slot, 0) + 1
            domains.append(domain)
    return domains


# --------------------------------------------------------------------------- metrics

ATTEMPTS_RE = re.compile(
    r"^mailsluice_delivery_attempts_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$", re.MULTILINE
)


def attempts(metrics_text: str, pool: str = "default") -> dict[str, int]:
    """A worker's delivery attempts by result, from its /metrics text."""
    found: dict[str, int] = {}
    for match in ATTEMPTS_RE.finditer(metrics_text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group("labels")))
        if labels.get("pool") == pool:
            result = labels.get("result", "")
            found[result] = found.get(result, 0) + int(float(match.group("value")))
    return found


# --------------------------------------------------------------------------- a round


@dataclass
class WorkerFigures:
    """One worker of a round: CPU seconds from its readiness to the last message at the sink,
    its attempts by result, its peak RSS."""

    cpu_s: float | None
    attempts: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: float | None = None

    @property
    def delivered(self) -> int:
        return self.attempts.get("delivered", 0)


def round_figures(
    workers: int,
    messages: int,
    *,
    seconds: float | None,
    all_ready: tuple[int, float],
    each: Sequence[WorkerFigures],
    broker_cpu_s: float | None,
) -> dict[str, Any]:
    """The JSON of one round. msgs_per_s: first to last message at the sink. all_ready: (the
    messages still to come, the seconds to the last) from the moment the last worker had its
    partitions: the drain by all k workers, without the head start of the first to join the
    group (should its join miss the broker's 3 s wait for a new group's members). CPU:
    all workers together, each from its own readiness, the broker apart; a worker's core
    share is its CPU over the drain's seconds."""
    cpu = [w.cpu_s for w in each]
    workers_cpu = bench_cpu.total(*cpu)
    left, left_s = all_ready
    return {
        "workers": workers,
        "messages": messages,
        "seconds": None if seconds is None else round(seconds, 3),
        "msgs_per_s": rate(messages - 1, seconds),
        "all_ready_msgs_per_s": rate(left, left_s),
        "all_ready_messages": left,
        "cpu_ms_per_msg": bench_cpu.ms_per_msg(workers_cpu, messages),
        "broker_cpu_ms_per_msg": bench_cpu.ms_per_msg(broker_cpu_s, messages),
        "msgs_per_cpu_s": round(messages / workers_cpu, 1) if workers_cpu else None,
        "worker_cpu_s": [None if c is None else round(c, 2) for c in cpu],
        "worker_core_share": [
            None if c is None or not seconds else round(c / seconds, 2) for c in cpu
        ],
        "worker_messages": [w.delivered for w in each],
        "worker_attempts_not_delivered": [sum(w.attempts.values()) - w.delivered for w in each],
        "worker_peak_rss_mb": [w.peak_rss_mb for w in each],
    }


def rate(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds and seconds > 0 and count > 0 else None


def speedups(rounds: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Each round's throughput over the one-worker round's ({"2": 1.6, ...})."""
    base = next((r["msgs_per_s"] for r in rounds if r["workers"] == 1), None)
    return {
        str(r["workers"]): round(r["msgs_per_s"] / base, 2) if base and r["msgs_per_s"] else None
        for r in rounds
    }


def round_lines(figures: dict[str, Any]) -> list[str]:
    """The printed summary of one round."""
    lines = [
        f"{figures['workers']} worker(s): {figures['msgs_per_s']} msg/s drained "
        f"({figures['seconds']} s; {figures['all_ready_msgs_per_s']} msg/s for the "
        f"{figures['all_ready_messages']} left once all were assigned), "
        f"{bench_cpu.describe(figures['cpu_ms_per_msg'], 'all workers')}, "
        f"{bench_cpu.describe(figures['broker_cpu_ms_per_msg'], 'broker')}, "
        f"{figures['msgs_per_cpu_s']} msg per worker CPU second"
    ]
    for index, cpu_s in enumerate(figures["worker_cpu_s"]):
        lines.append(
            f"  worker {index + 1}: {figures['worker_messages'][index]} messages, CPU {cpu_s} s "
            f"({figures['worker_core_share'][index]} of a core), "
            f"peak RSS {figures['worker_peak_rss_mb'][index]} MB"
        )
    return lines
