"""Open and click tracking of one recipient's copy, before its List-Unsubscribe fields and
before the transport's DKIM signature (which then covers the rewritten bytes).

What a message tracks: its envelope's `tracking` (the request's, its campaign's or its tenant's
choice, set by the API or ingest), else the pool's default (MAILSLUICE_TRACKING_DEFAULT).
Nothing is tracked without a tracker URL and keys, for a bounce (null reverse-path), or for a
transactional message unless MAILSLUICE_TRACKING_TRANSACTIONAL is set and the message itself
asks (a receipt is not the pool's newsletter). Clicks redirect the HTML links through the
tracker; opens add a pixel; links to the unsubscribe service are never redirected, so an
unsubscribe works even where the tracker is blocked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsluice.contracts.envelope import TRACKING, Envelope
from mailsluice.metrics.delivery import TRACKING as TRACKED
from mailsluice.tracking.rewrite import Plan
from mailsluice.tracking.settings import TrackingSettings
from mailsluice.tracking.tokens import Mark, TrackingKeys, trackable

log = logging.getLogger(__name__)

OFF = "off"
_CLICKS = frozenset({"clicks", "all"})
_OPENS = frozenset({"opens", "all"})


def _every_link(_target: str) -> bool:
    return True


@dataclass(frozen=True)
class Tracking:
    """Rewrites each recipient's copy as its message's tracking asks."""

    settings: TrackingSettings
    keys: TrackingKeys
    # The unsubscribe service's base URL: links under it stay as they are.
    unsubscribe_url: str = ""
    wall: Callable[[], float] = field(default=time.time)

    def choice(self, env: Envelope) -> str:
        """off, opens, clicks or all: what this message's copies track."""
        if not self.settings.enabled or not self.keys or not env.sender:
            return OFF
        asked = env.tracking if env.tracking in TRACKING else ""
        if env.stream != "bulk" and not (self.settings.transactional and asked):
            return OFF
        return asked or self.settings.default

    def keep(self, target: str) -> bool:
        """Whether a link stays as it is although clicks are tracked: the unsubscribe links,
        and a target no token can hold."""
        if not trackable(target):
            return True
        base = self.unsubscribe_url
        return bool(base) and (target == base or target.startswith(base + "/"))

    def copy(self, env: Envelope, recipient: str, planned: Plan, choice: str) -> bytes:
        """The recipient's copy of the message `planned` (tracking.rewrite.plan, once for all
        its recipients), rewritten for `choice` (not off); counted."""
        mark = Mark(
            kind="open",
            queue_id=env.queue_id,
            recipient=recipient,
            sent=int(self.wall()),
            pool=env.pool,
            routing_key=env.routing_key,
            tenant=env.tenant,
            campaign=env.campaign,
        )
        base = self.settings.url

        def click_url(index: int, target: str) -> str:
            return self.keys.click_url(base, mark, index, target)

        def open_url() -> str:
            return self.keys.open_url(base, mark)

        done = planned.apply(
            click_url,
            open_url if choice in _OPENS else None,
            self.keep if choice in _CLICKS else _every_link,
        )
        outcome = done.unchanged.value if done.unchanged is not None else "tracked"
        TRACKED.labels(outcome).inc()
        if done.unchanged is not None:
            log.info("not tracked: %s", outcome, extra={"queue_id": env.queue_id, "pool": env.pool})
        return done.message


def from_settings(settings: TrackingSettings, unsubscribe_url: str) -> Tracking | None:
    """The tracking of a worker (None when no tracker URL is set); ValueError when the URL is
    set but the keys cannot be read or there are none."""
    if not settings.enabled:
        return None
    keys = settings.key_ring()
    if not keys:
        raise ValueError("MAILSLUICE_TRACKING_URL is set but no token key is configured")
    return Tracking(settings, keys, unsubscribe_url)
