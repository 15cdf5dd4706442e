"""Campaigns and tags: what a sender reports a message under. Both travel in the envelope and
in every event of the message (contracts/envelope.py, contracts/events.py); campaign stats count
by campaign. Neither ever becomes a metric label value.

A campaign id is a name like a tenant's (letters, digits, `._@+-`, first a letter or digit, up
to 128 characters); a message has at most MAX_TAGS tags, each up to MAX_TAG_CHARS printable
ASCII characters other than `,` (the SMTP field lists tags with commas), none repeated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_CAMPAIGN_CHARS = 128
MAX_TAGS = 10
MAX_TAG_CHARS = 64

_CAMPAIGN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._@+-]{{0,{MAX_CAMPAIGN_CHARS - 1}}}$")
_TAG_CHARS = re.compile(r"^[\x20-\x2b\x2d-\x7e]+$")  # printable ASCII and space, no comma


def _valid_tag(tag: str) -> bool:
    return 0 < len(tag) <= MAX_TAG_CHARS and tag == tag.strip() and bool(_TAG_CHARS.match(tag))


class LabelError(ValueError):
    """A campaign id or tag list that may not be used (the message says why)."""


def check_campaign(campaign: str) -> str:
    """The campaign id as given ("" for none); LabelError when it is not one."""
    if campaign and not _CAMPAIGN.match(campaign):
        raise LabelError(
            f"campaign must be 1-{MAX_CAMPAIGN_CHARS} letters, digits or ._@+- "
            "starting with a letter or digit"
        )
    return campaign


def check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """The tags in their order; LabelError for too many, a repeated or a malformed one."""
    found = tuple(tags)
    if len(found) > MAX_TAGS:
        raise LabelError(f"at most {MAX_TAGS} tags")
    for tag in found:
        if not _valid_tag(tag):
            raise LabelError(
                f"tag {tag[:80]!r}: 1-{MAX_TAG_CHARS} printable ASCII characters, no comma, "
                "no space at either end"
            )
    if len(set(found)) != len(found):
        raise LabelError("a tag is repeated")
    return found


def parse_tag_list(value: str) -> tuple[str, ...]:
    """The tags of a comma-separated field value (surrounding spaces ignored, empties skipped)."""
    return check_tags(t.strip() for t in value.split(",") if t.strip())
