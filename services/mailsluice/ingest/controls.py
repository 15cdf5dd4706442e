"""What a client asks for in our control header fields, which prepare_message (message.py) takes
out of the message: the stream (X-Mailsluice-Stream), the campaign (X-Mailsluice-Campaign), the
tags (X-Mailsluice-Tags, comma-separated) and open and click tracking (X-Mailsluice-Track: off,
opens, clicks or all; absent: the tenant's default, else the pool's). The pool header is judged
with the sender's pools (plan.choose_pool).

Campaign and tags follow contracts/campaigns.py; a value that does not is refused with 550 5.6.0
(the message content is unusable as given, RFC 3463), never dropped: a campaign missing from its
stats would go unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailsluice.contracts.campaigns import LabelError, check_campaign, parse_tag_list
from mailsluice.contracts.envelope import TRACKING, Stream
from mailsluice.ingest import replies
from mailsluice.ingest.message import Prepared


def choose_stream(requested: str | None) -> Stream | None:
    """The stream of a message (bulk unless the header says otherwise); None if unknown.
    An unknown value is refused rather than guessed: a receipt sent as bulk waits behind a
    newsletter backlog."""
    value = (requested or "").strip().lower() or "bulk"
    if value == "transactional":
        return "transactional"
    if value == "bulk":
        return "bulk"
    return None


@dataclass(frozen=True)
class Labels:
    """Whose message it is and what it is reported under: envelope and event fields."""

    tenant: str = ""
    campaign: str = ""
    tags: tuple[str, ...] = ()
    tracking: str = ""  # what the message tracks ("" : as the pool says)

    def fields(self) -> dict[str, Any]:
        """Those every event of the message carries."""
        return {"tenant": self.tenant, "campaign": self.campaign, "tags": self.tags}

    def queued(self) -> dict[str, Any]:
        """Those its queue envelope carries: the events' and what it tracks."""
        return {**self.fields(), "tracking": self.tracking}


def labels_of(prepared: Prepared, tenant: str, tracking: str = "") -> Labels | str:
    """The labels of a prepared message sent for `tenant` (whose default tracking is
    `tracking`), or the reply refusing it."""
    try:
        campaign = check_campaign((prepared.campaign or "").strip())
        tags = parse_tag_list(prepared.tags or "")
    except LabelError as exc:
        return replies.S550_BAD_LABELS.format(error=exc)
    if prepared.track is not None:
        tracking = prepared.track.strip().lower()
        if tracking not in TRACKING:
            return replies.S550_BAD_TRACK
    return Labels(tenant, campaign, tags, tracking)
