"""Records of mailsluice.tenant-usage: how many recipients one process (a replica of ingest or
of the HTTP API) accepted for a tenant in one quota window (tenancy/quota.py).

Key "<replica>|<tenant>|<window>|<start>", one record per process and window, so processes never
overwrite each other's counts; each record is that process's latest count, not an increment
(a lost or repeated record changes nothing). Every process adds up the others' (tenancy/usage.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mailsluice.contracts.versioning import load_versioned

VERSION = 1
WINDOWS = ("hour", "day")
SEPARATOR = "|"  # in no tenant name (a scope name) and no replica id


@dataclass(frozen=True)
class TenantUsage:
    replica: str  # the process that counted
    tenant: str
    window: str  # one of WINDOWS
    start: int  # epoch seconds the window began
    count: int  # recipients accepted in it so far
    ts: float  # when the count was reported

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"unknown quota window {self.window!r}")
        if any(SEPARATOR in part or not part for part in (self.replica, self.tenant)):
            raise ValueError(f"replica and tenant are non-empty and hold no {SEPARATOR!r}")
        if self.count < 0:
            raise ValueError("a count is never negative")


def usage_key(usage: TenantUsage) -> bytes:
    return SEPARATOR.join((usage.replica, usage.tenant, usage.window, str(usage.start))).encode()


def encode_usage(usage: TenantUsage) -> bytes:
    return json.dumps({"v": VERSION, **asdict(usage)}, sort_keys=True).encode()


def decode_usage(raw: bytes) -> TenantUsage:
    """Raises ValueError (NewerSchema for a newer version) when the record cannot be read."""
    data = load_versioned(raw, VERSION, "tenant usage")
    try:
        return TenantUsage(
            str(data["replica"]),
            str(data["tenant"]),
            str(data["window"]),
            int(data["start"]),
            int(data["count"]),
            float(data["ts"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"tenant usage record without {exc}") from None
