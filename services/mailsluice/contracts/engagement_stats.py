"""Records of the compacted topic mailsluice.engagement-days: a tenant's deliveries, unique
opens and clicks at one provider on one UTC day, as one partition of mailsluice.events counted them.

Key `"<tenant>|<provider>|<day>|<partition>"` (day `YYYY-MM-DD`): every partition of the events
topic counts every tenant, so a reader sums a (tenant, provider, day)'s partitions. Opens and
clicks count on the day their message was delivered (`Event.sent_at`), so a window's rates are
those of the mail it delivered. The provider is the routing key's (`contracts.routing.base_of`),
`other` for a raw domain, so the key set stays bounded. Counts as in contracts/campaign_stats.py.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.campaign_stats import engagement_rates
from mailsluice.contracts.keys import key_fields
from mailsluice.contracts.versioning import load_versioned

VERSION = 1
COUNTS = ("delivered", "opens", "opens_human", "clicks", "clicks_human", "every_link")


class EngagementBucket(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    tenant: str
    provider: str
    day: str
    partition: int = 0
    ts: float = Field(default_factory=time.time)  # when published
    delivered: int = 0
    opens: int = 0
    opens_human: int = 0
    clicks: int = 0
    clicks_human: int = 0
    every_link: int = 0

    def rates(self, *, human: bool) -> dict[str, float | None]:
        opens, clicks = (
            (self.opens_human, self.clicks_human) if human else (self.opens, self.clicks)
        )
        return engagement_rates(self.delivered, opens, clicks)


def bucket_key(tenant: str, provider: str, day: str, partition: int) -> str:
    return f"{tenant}|{provider}|{day}|{partition}"


def parse_bucket_key(key: bytes | str) -> tuple[str, str, str, int]:
    tenant, provider, day, partition = key_fields(key, 4, "an engagement key")
    if not partition.isdigit():
        raise ValueError(f"not an engagement key: {partition[:200]!r} is not a partition")
    return tenant, provider, day, int(partition)


def encode_bucket(bucket: EngagementBucket) -> bytes:
    return bucket.model_dump_json().encode()


def decode_bucket(raw: bytes) -> EngagementBucket:
    return EngagementBucket.model_validate(load_versioned(raw, VERSION, "engagement bucket"))
