"""Tracking tokens: the signed path of an open pixel or click redirect. Pure.

A token names the message (queue id, pool, routing key, tenant, campaign), the recipient, when
the message was sent and, for a click, the link's index and target. It is sealed (`sealing`,
AES-SIV under the tracking keys), so the redirect goes only where the sender's own message
pointed: the target is inside the token, never a parameter anyone can change (no open
redirect), and a link shows nothing of the recipient's address. Encoded base64url without
padding, for a URL path.

Links are `<base>/o/<token>` (the pixel) and `<base>/c/<token>` (a click).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from mailsluice.sealing import Sealer, TokenError

VERSION = b"\x01"
_PURPOSE = b"mailsluice tracking token"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,4000}$")
# kind, queue id, recipient, pool, routing key, tenant, campaign, sent, link index, target
_FIELDS = 10
OPEN_PATH = "/o/"
CLICK_PATH = "/c/"
# Longest link target sealed into a token; a longer one stays as it was (untracked).
MAX_TARGET = 2000

Kind = Literal["open", "click"]


def trackable(target: str) -> bool:
    """Whether a link's target can be sealed into a click token (short enough for a URL, and
    without the control characters tokens cannot hold); other links stay as they are."""
    return len(target) <= MAX_TARGET and target.isprintable()


_KINDS: dict[str, Kind] = {"o": "open", "c": "click"}

__all__ = ["Mark", "TokenError", "TrackingKeys"]


@dataclass(frozen=True)
class Mark:
    """What a tracking token says: an `open` of, or a `click` on link `link` (its index in the
    message) to `target` in, the message `queue_id` sent to `recipient` at `sent` (epoch
    seconds)."""

    kind: Kind
    queue_id: str
    recipient: str
    sent: int
    pool: str = ""
    routing_key: str = ""
    tenant: str = ""
    campaign: str = ""
    link: int = -1
    target: str = ""

    def click(self, link: int, target: str) -> Mark:
        """The mark of a click on link `link` of the same message."""
        return replace(self, kind="click", link=link, target=target)


class TrackingKeys:
    """The keys tracking tokens are sealed with; `active` mints, every key verifies."""

    def __init__(self, keys: Mapping[str, bytes], active: str = "") -> None:
        self._sealer = Sealer(keys, active, purpose=_PURPOSE, version=VERSION)
        self.active = self._sealer.active

    def __bool__(self) -> bool:
        return bool(self._sealer)

    def mint(self, mark: Mark) -> str:
        fields = (
            mark.kind[0],
            mark.queue_id,
            mark.recipient,
            mark.pool,
            mark.routing_key,
            mark.tenant,
            mark.campaign,
            str(mark.sent),
            str(mark.link) if mark.kind == "click" else "",
            mark.target if mark.kind == "click" else "",
        )
        return base64.urlsafe_b64encode(self._sealer.seal(fields)).decode().rstrip("=")

    def verify(self, token: str) -> Mark:
        """The mark of a genuine token; TokenError for anything else."""
        text = token.strip()
        if not _TOKEN.match(text):
            raise TokenError("malformed", "not a token")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("malformed", "not base64url") from None
        parts = self._sealer.open(raw)
        if len(parts) != _FIELDS or parts[0] not in _KINDS:
            raise TokenError("malformed", "unknown layout")
        kind, queue_id, recipient, pool, routing_key, tenant, campaign, sent, link, target = parts
        try:
            return Mark(
                kind=_KINDS[kind],
                queue_id=queue_id,
                recipient=recipient,
                sent=int(sent),
                pool=pool,
                routing_key=routing_key,
                tenant=tenant,
                campaign=campaign,
                link=int(link) if link else -1,
                target=target,
            )
        except ValueError:
            raise TokenError("malformed", "bad number") from None

    def open_url(self, base: str, mark: Mark) -> str:
        return f"{base}{OPEN_PATH}{self.mint(mark)}"

    def click_url(self, base: str, mark: Mark, link: int, target: str) -> str:
        return f"{base}{CLICK_PATH}{self.mint(mark.click(link, target))}"
