"""Records of the compacted topic mailsluice.engagement: how engaged one address is with one
tenant's mail, and the engagement grades a message carries (Envelope.grade).

Key `"<tenant>|<address>"`, the address lower-cased (a tenant name holds no `|`; "" for mail
sent for no tenant). The stream processors publish an address's whole record after every
delivery, open or click of it (streams/hygiene.py); the topic's latest record is its state.

An engagement is a human open or click (Event.machine == ""): a privacy proxy's prefetch or a
scanner's click says nothing about the person. `deliveries` counts the deliveries since the
last engagement, or since the first delivery when there was none.

Grades, higher is more engaged; 0 is "not graded" (the envelope's default). A warming pool
spends its cap on higher grades first, so an address nobody knows yet (NEW) goes before one
that has ignored many messages (UNENGAGED), and after anyone who opened or clicked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.keys import key_fields
from mailsluice.contracts.versioning import load_versioned

VERSION = 1
DAY_S = 86400

NOT_GRADED = 0
UNENGAGED = 1  # no engagement for LAPSED_DAYS (or ever), and UNENGAGED_DELIVERIES since
NEW = 2  # never engaged, little history: an address we cannot judge yet
LAPSED = 3  # engaged, longer than RECENT_DAYS ago
RECENT = 4  # engaged within RECENT_DAYS
ACTIVE = 5  # engaged within ACTIVE_DAYS
GRADES = {
    NOT_GRADED: "not-graded",
    UNENGAGED: "unengaged",
    NEW: "new",
    LAPSED: "lapsed",
    RECENT: "recent",
    ACTIVE: "active",
}
# The grade of a message of a tenant to these recipients (the engagement store's).
Grader = Callable[[str, Iterable[str]], int]
ACTIVE_DAYS = 30
RECENT_DAYS = 90
# Deliveries without an engagement after which an address no longer counts as new.
UNENGAGED_DELIVERIES = 5


class Engagement(BaseModel):
    """One address's engagement with one tenant's mail (epoch seconds; 0: never)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    tenant: str = ""
    address: str
    first_delivered: float = 0.0
    last_delivered: float = 0.0
    last_engaged: float = 0.0  # the latest human open or click
    deliveries: int = 0  # since last_engaged, or since the first delivery
    # when the stream processors suppressed it as `unengaged` in the tenant's scope (0: not)
    unengaged_at: float = 0.0
    ts: float = Field(default_factory=time.time)  # when published

    @property
    def since(self) -> float:
        """Where the current run of deliveries without an engagement starts."""
        return self.last_engaged or self.first_delivered


def engagement_key(tenant: str, address: str) -> bytes:
    return f"{tenant}|{address.strip().lower()}".encode()


def parse_engagement_key(key: bytes | str) -> tuple[str, str]:
    """(tenant, address) of a record key; ValueError for a key without the separator."""
    tenant, address = key_fields(key, 2, "an engagement key")
    return tenant, address


def encode_engagement(record: Engagement) -> bytes:
    return record.model_dump_json().encode()


def decode_engagement(raw: bytes) -> Engagement:
    return Engagement.model_validate(load_versioned(raw, VERSION, "engagement"))


def grade(record: Engagement | None, now: float) -> int:
    """The grade of an address at `now`; no record is an address never delivered to: NEW."""
    if record is None:
        return NEW
    if record.last_engaged:
        age = now - record.last_engaged
        if age <= ACTIVE_DAYS * DAY_S:
            return ACTIVE
        if age <= RECENT_DAYS * DAY_S:
            return RECENT
    if record.unengaged_at or record.deliveries >= UNENGAGED_DELIVERIES:
        return UNENGAGED
    return LAPSED if record.last_engaged else NEW
