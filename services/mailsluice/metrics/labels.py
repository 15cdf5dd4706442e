"""Label helpers shared by every component's metrics: closed value sets, the provider and
status-class labels, buckets, and a stopwatch for histograms."""

from __future__ import annotations

import re
import time
from typing import Any

from mailsluice.contracts.routing import base_of

OTHER = "other"
OUTCOME_RESULTS = ("delivered", "deferred", "bounced")
# RFC 3463 status class and subject ("4.7" = security/policy), which bounds the label values.
STATUS_CLASSES = (*(f"{c}.{s}" for c in (4, 5) for s in range(8)), OTHER)

_PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.\d{1,3}$")

TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
AGE_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200)


def provider_label(routing_key: str) -> str:
    """The provider a routing key belongs to ("google#3" -> "google"); a raw domain -> other.
    Provider names cannot contain dots, domains always do."""
    base = base_of(routing_key)
    return base if _PROVIDER_NAME.match(base) else OTHER


def status_class(enhanced: str) -> str:
    """The RFC 3463 class.subject of an enhanced status code ("4.7.1" -> "4.7"), else other."""
    found = _STATUS.match(enhanced or "")
    if found is None or int(found.group(2)) > 7:
        return OTHER
    return f"{found.group(1)}.{found.group(2)}"


class Stopwatch:
    """`with Stopwatch(SMTP_SECONDS.labels("connect")):` observes the block's duration."""

    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        self._histogram.observe(time.monotonic() - self._started)


# --- metric names -------------------------------------------------------------------------------
# Names are mailsluice_<component>_<thing>_<unit|total>; labels come from closed sets only.

METRIC_PREFIX = "mailsluice"
