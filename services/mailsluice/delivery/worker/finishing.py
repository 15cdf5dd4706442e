"""The last changes to a message before the transport sends it: per-recipient open and click
tracking (tracking.py) and List-Unsubscribe (RFC 2369, RFC 8058) on bulk mail, in that order.

Both name one recipient, so a message with either goes out as one transaction per recipient,
one after the other over the transport's pooled connections (its per-connection limits hold as
ever). `Finishing` wraps the transport: the worker sees one send with a result per recipient,
the shaper observes every one of them, and the destination's rates are charged for every
transaction past the first (the scheduler gave the message one slot). A reply that is not
about the recipient (given before RCPT, or a 421: the remote closes) answers for the
recipients not yet tried, as the transport does for later batches when no hop could be
reached. Messages that already carry List-Unsubscribe, transactional ones (unless configured)
and every message while no link base is configured get no fields; a message that gets neither
fields nor tracking goes out unchanged in one transaction. DKIM signs in the transport, after
these changes, on the bytes sent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mailsluice.config import load
from mailsluice.consent import headers
from mailsluice.consent.settings import UnsubscribeSettings
from mailsluice.consent.tokens import KeyRing, claim_for
from mailsluice.contracts.envelope import Envelope
from mailsluice.delivery.worker import outcomes
from mailsluice.delivery.worker.tracking import OFF, Tracking, from_settings
from mailsluice.tracking.rewrite import Plan, plan
from mailsluice.tracking.settings import TrackingSettings

if TYPE_CHECKING:
    from mailsluice.delivery.worker.attempts import TransportLike

log = logging.getLogger(__name__)

# Phases whose reply holds for every recipient of the message, not the one asked about.
_BEFORE_RCPT = frozenset({"connect", "greeting", "ehlo", "tls", "mail"})


class Charged(Protocol):
    """The shaper's side of a split (engine.PolicyShaper.charge): the scheduler took one slot
    for the message, and the destination's rates must pay for every transaction made."""

    def charge(self, key: str, source: str, now: float, count: int) -> None: ...


@dataclass(frozen=True)
class Setup:
    """What finishing takes from the settings: List-Unsubscribe's and tracking's (None: off)."""

    unsubscribe: UnsubscribeSettings
    keys: KeyRing
    tracking: Tracking | None = None


def load_setup() -> Setup:
    """The MAILSLUICE_UNSUBSCRIBE_* and MAILSLUICE_TRACKING_* settings with their keys; exits 2
    when keys cannot be read (before the worker takes any message)."""
    settings = load(UnsubscribeSettings)
    try:
        keys = settings.key_ring()
    except (OSError, ValueError) as exc:
        log.error("unsubscribe keys: %s", exc)
        raise SystemExit(2) from None
    try:
        tracking = from_settings(load(TrackingSettings), settings.url)
    except (OSError, ValueError) as exc:
        log.error("tracking keys: %s", exc)
        raise SystemExit(2) from None
    return Setup(settings, keys, tracking)


class Finishing:
    """A transport that finishes each message (see the module docstring) before sending."""

    def __init__(
        self,
        transport: TransportLike,
        settings: UnsubscribeSettings,
        keys: KeyRing,
        shaper: Charged | None = None,
        mono: Callable[[], float] | None = None,
        *,
        tracking: Tracking | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.keys = keys
        self.shaper, self.mono = shaper, mono
        self.tracking = tracking
        if settings.enabled and not keys:
            raise ValueError("MAILSLUICE_UNSUBSCRIBE_URL is set but no token key is configured")

    def applies(self, env: Envelope, message: bytes) -> bool:
        """Whether the message gets per-recipient List-Unsubscribe fields."""
        if not self.settings.enabled or not env.sender:
            return False  # no link, or a bounce (null reverse-path)
        if env.stream != "bulk" and not self.settings.transactional:
            return False
        return not headers.has_list_unsubscribe(message)

    def finish(
        self,
        env: Envelope,
        recipient: str,
        message: bytes,
        *,
        fields: bool = True,
        track: str = OFF,
        planned: Plan | None = None,
    ) -> bytes:
        """The recipient's copy: tracked as `track` says (from `planned`, the message's
        tracking plan when the caller made it once for every recipient), then with its
        List-Unsubscribe fields when `fields`."""
        if track != OFF and self.tracking is not None:
            planned = planned if planned is not None else plan(message)
            message = self.tracking.copy(env, recipient, planned, track)
        if not fields:
            return message
        claim = claim_for(
            recipient,
            tenant=env.tenant,
            list_id=env.list_id,
            sender=env.sender,
            preference=self.settings.scope,
            campaign=env.campaign,
        )
        token = self.keys.mint(claim)
        s = self.settings
        return headers.with_fields(message, s.url, s.mailto_domain, token)

    async def send(
        self, env: Envelope, message: bytes, *, source: str = ""
    ) -> Sequence[outcomes.ResultLike]:
        fields = self.applies(env, message)
        track = self.tracking.choice(env) if self.tracking is not None else OFF
        if not fields and track == OFF:
            return await self.transport.send(env, message, source=source)
        # Every copy differs from the others by its tokens only: the HTML is read once.
        planned = plan(message) if track != OFF else None
        results: list[outcomes.ResultLike] = []
        i = 0
        for i, rcpt in enumerate(env.recipients):
            one = env.model_copy(update={"recipients": (rcpt,)})
            copy = self.finish(env, rcpt, message, fields=fields, track=track, planned=planned)
            got = list(await self.transport.send(one, copy, source=source))
            results += got
            if got and _for_everyone(got[0]):
                results += [_as(got[0], r) for r in env.recipients[i + 1 :]]
                break
        if self.shaper is not None and self.mono is not None and i > 0:
            self.shaper.charge(env.routing_key, source, self.mono(), i)
        return results

    async def close(self) -> None:
        await self.transport.close()


def _for_everyone(result: outcomes.ResultLike) -> bool:
    return result.kind != "delivered" and (result.phase in _BEFORE_RCPT or result.code == 421)


def _as(result: Any, recipient: str) -> outcomes.ResultLike:
    copied: outcomes.ResultLike = dataclasses.replace(result, recipient=recipient)
    return copied


def wrap(
    transport: TransportLike,
    shaper: Charged | None = None,
    mono: Callable[[], float] | None = None,
    setup: Setup | None = None,
) -> TransportLike:
    """The transport a worker sends through: as given when already finishing, else wrapped
    with `setup` (the service loads it at start; None: read from the environment now);
    `shaper` is charged for the transactions a split adds, at `mono()`."""
    if isinstance(transport, Finishing):
        return transport
    s = setup if setup is not None else load_setup()
    return Finishing(transport, s.unsubscribe, s.keys, shaper, mono, tracking=s.tracking)
