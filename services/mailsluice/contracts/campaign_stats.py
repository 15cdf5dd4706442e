"""Records of the compacted topic mailsluice.campaign-stats: a campaign's latest counts.

Key `"<tenant>|<campaign>"` (neither holds a `|`: both are names, contracts/campaigns.py); the
stream processors publish the whole snapshot at most every few seconds per campaign, so the
topic's latest record is the campaign's state. What each count means (streams/campaigns.py):

- `accepted`: recipients taken into the queue (reception events, `Event.recipients` each);
  `rejected`: refused at intake; `suppressed`: not sent because a suppression list holds them
  (at intake or just before an attempt); `requested` = accepted + rejected + suppressed.
- `delivered`, `bounced_hard` / `bounced_soft` (streams/rules.py's classification: hard = the
  address is dead), `expired` (retried for the whole retry period): final outcomes.
- `deferred`: recipients whose latest event is a transient failure, now.
- `complaints`, `unsubscribes`: events that name the campaign.
- `pending`: recipients accepted and not final yet, by destination (the routing key's provider
  or domain, `contracts.routing.base_of`; "" where the reception named none), the largest
  `MAX_DESTINATIONS` only, the others summed under OTHER.
- `opens`, `clicks`: unique per message and recipient, raw (machines too); `opens_human`,
  `clicks_human`: the estimated-human ones (not judged a machine's, not in an every-link burst;
  a click counts as an open too); `every_link`: messages whose clicks were such a burst.
- `pools`: the pools its mail goes through (the ETA takes their rates and warm-up caps).
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.keys import key_fields
from mailsluice.contracts.versioning import load_versioned

VERSION = 1
MAX_DESTINATIONS = 200
MAX_POOLS = 8
# The pending recipients of the destinations past the largest MAX_DESTINATIONS.
OTHER = "*other*"

COUNTS = (
    "accepted",
    "rejected",
    "suppressed",
    "delivered",
    "bounced_hard",
    "bounced_soft",
    "expired",
    "complaints",
    "unsubscribes",
    # engagement (streams/engagement.py)
    "opens",
    "opens_human",
    "clicks",
    "clicks_human",
    "every_link",
)


class CampaignStats(BaseModel):
    """One campaign's counts, as the stream processors last published them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    tenant: str
    campaign: str
    ts: float = Field(default_factory=time.time)  # when published
    first_event: float = 0.0  # epoch seconds of the first and latest event counted
    last_event: float = 0.0
    accepted: int = 0
    rejected: int = 0
    suppressed: int = 0
    delivered: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    expired: int = 0
    complaints: int = 0
    unsubscribes: int = 0
    opens: int = 0
    opens_human: int = 0
    clicks: int = 0
    clicks_human: int = 0
    every_link: int = 0
    deferred: int = 0
    pending: dict[str, int] = Field(default_factory=dict)
    # the pools its accepted and finished mail went through (the first MAX_POOLS, sorted)
    pools: tuple[str, ...] = ()

    @property
    def requested(self) -> int:
        return self.accepted + self.rejected + self.suppressed

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())

    def rates(self, *, human: bool) -> dict[str, float | None]:
        """Open, click-through and click-to-open rates, raw or estimated-human."""
        opens, clicks = (
            (self.opens_human, self.clicks_human) if human else (self.opens, self.clicks)
        )
        return engagement_rates(self.delivered, opens, clicks)


def engagement_rates(delivered: int, opens: int, clicks: int) -> dict[str, float | None]:
    """Open rate, click-through rate and click-to-open rate (null without a denominator)."""
    return {
        "open_rate": opens / delivered if delivered else None,
        "click_rate": clicks / delivered if delivered else None,
        "click_to_open_rate": clicks / opens if opens else None,
    }


def stats_key(tenant: str, campaign: str) -> bytes:
    return f"{tenant}|{campaign}".encode()


def parse_stats_key(key: bytes | str) -> tuple[str, str]:
    """(tenant, campaign) of a record key; ValueError for a key without the separator."""
    tenant, campaign = key_fields(key, 2, "a campaign stats key")
    return tenant, campaign


def encode_stats(stats: CampaignStats) -> bytes:
    return stats.model_dump_json().encode()


def decode_stats(raw: bytes) -> CampaignStats:
    return CampaignStats.model_validate(load_versioned(raw, VERSION, "campaign stats"))
