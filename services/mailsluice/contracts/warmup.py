"""Records of the compacted warm-up ledger, mailsluice.warmup: what each worker counted against
a pool's warm-up caps in the current period.

Key "<pool>/<source>/<scope>", one record per scope so that concurrent workers never overwrite
each other's counts: the scope is a provider name (one partition, hence one worker, owns a
provider's routing key) or "*@<owner>" for one worker's share of the pool-wide cap. A restarted
worker reads its records back before it sends; the operator sums them for the pool's status.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mailsluice.contracts.versioning import load_versioned

VERSION = 1


@dataclass(frozen=True)
class WarmupUsage:
    pool: str
    source: str  # the pool's source address the warm-up is for ("" for the whole pool)
    scope: str
    start: str  # ISO date the warm-up began: usage of an earlier warm-up is not carried over
    window: float  # epoch seconds the counted period (hour or day) began
    used: int


def record_key(pool: str, source: str, scope_key: str) -> bytes:
    return f"{pool}/{source}/{scope_key}".encode()


def parse_record_key(key: bytes) -> tuple[str, str, str]:
    pool, source, scope = key.decode().split("/", 2)
    return pool, source, scope


def encode_usage(usage: WarmupUsage) -> bytes:
    return json.dumps({"v": VERSION, **asdict(usage)}, sort_keys=True).encode()


def decode_usage(raw: bytes) -> WarmupUsage:
    """Raises ValueError (NewerSchema for a newer version) when the record cannot be read."""
    data = load_versioned(raw, VERSION, "warm-up usage")
    try:
        return WarmupUsage(
            str(data["pool"]),
            str(data["source"]),
            str(data["scope"]),
            str(data["start"]),
            float(data["window"]),
            int(data["used"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"warm-up usage record without {exc}") from None
