"""Routing keys: the Kafka key of queue and retry records, and the name of a destination. A
domain ("example.com"), a provider ("google") or one of a provider's shards ("google#3"; the
recipient chooses it, policy/rollup.py)."""

from __future__ import annotations


def shard_key(provider: str, shard: int) -> str:
    return f"{provider}#{shard}"


def split_key(key: str) -> tuple[str, int | None]:
    """("google", 3) for "google#3"; (key, None) for a key without a shard."""
    base, sep, num = key.rpartition("#")
    if sep and num.isdigit():
        return base, int(num)
    return key, None


def base_of(key: str) -> str:
    """The provider or domain of a routing key, its shard taken off."""
    return split_key(key)[0]
