"""Reading compacted topics: every record from the beginning up to the current end."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_to_end(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], timeout_ms: int = 1000
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the partitions from the beginning up to their current end (the
    consumer has no group; it is assigned these partitions here)."""
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    end = await consumer.end_offsets(partitions)
    out: list[tuple[bytes | None, bytes | None]] = []
    pending = {tp for tp in partitions if end[tp] > 0}
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=timeout_ms)
        for records in batch.values():
            out.extend((r.key, r.value) for r in records)
        for tp in list(pending):
            if await consumer.position(tp) >= end[tp]:
                pending.discard(tp)
    return out
