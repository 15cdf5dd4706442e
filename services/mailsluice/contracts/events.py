"""Records of mailsluice.events: the closed set of event types and the event itself."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mailsluice.contracts.versioning import load_versioned

if TYPE_CHECKING:
    from mailsluice.contracts.envelope import Envelope

VERSION = 1


class EventType(StrEnum):
    """The closed set of event types on mailsluice.events."""

    RECEPTION = "reception"
    REJECTION = "rejection"
    DELIVERY = "delivery"
    TRANSIENT_FAILURE = "transient_failure"
    BOUNCE = "bounce"
    EXPIRATION = "expiration"
    SUPPRESSION = "suppression"
    # A recipient marked the message as spam (an ARF feedback-loop report, RFC 5965).
    COMPLAINT = "complaint"
    # A destination's shaping state changed for one source address (slowed down, blocked,
    # probing, back to normal): keyed by routing key, no queue id.
    DESTINATION_STATE = "destination_state"
    # A recipient unsubscribed (RFC 8058 one-click POST, or mail to the List-Unsubscribe
    # mailto address): `scope` names the suppression scope it asked for.
    UNSUBSCRIBE = "unsubscribe"
    # A recipient not sent to because the suppression list holds it for the message (ingest at
    # the end of DATA for a list scope, delivery just before each attempt): `reason` is the
    # scope's label ("global", "tenant:acme", ...), `text` the entry's own reason. Never a DSN.
    SUPPRESSED = "suppressed"
    # The recipient's mail client loaded the open pixel, or the recipient followed a tracked
    # link (the tracker service, tracking/tokens.py): `machine` says when it was judged not a
    # person (a privacy proxy's prefetch, a security scanner).
    OPEN = "open"
    CLICK = "click"


class Event(BaseModel):
    """One event, keyed by queue id on mailsluice.events."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    type: EventType
    ts: float = Field(default_factory=time.time)
    queue_id: str = ""
    pool: str = ""
    sender: str = ""
    recipient: str = ""
    routing_key: str = ""
    code: int = 0  # SMTP reply code, ours or the remote's
    enhanced: str = ""  # RFC 3463 enhanced status code, e.g. "5.1.1"
    text: str = ""
    reason: str = ""  # machine-readable reason or bounce class
    attempt: int = 0
    remote: str = ""  # remote host that answered, if any
    size: int = 0
    message_key: str = ""  # the envelope's, on delivery-side events
    # destination_state only: which source address, the states, the reply's class, and the
    # limits the destination has from that source now
    source: str = ""
    state_from: str = ""
    state_to: str = ""
    reply_class: str = ""
    rate: float = 0.0  # messages per second
    connections: int = 0
    # unsubscribe only: the label of the suppression scope asked for (contracts/suppressions.py);
    # `reason` says how: "one-click" (the HTTP POST) or "mailto"
    scope: str = ""
    # Whose message it is and what the sender reports it under (the envelope's): webhooks
    # choose a tenant's events by `tenant`, campaign stats count by `campaign`.
    tenant: str = ""
    campaign: str = ""
    tags: tuple[str, ...] = ()
    # --- campaign stats (streams/campaigns.py) ---
    # reception only: how many recipients this reception queued (SMTP ingest: the recipients of
    # the transaction taken into the queue; the API: 1 per recipient message). 0: not given,
    # read as 1 when the event names a recipient, else 0 (receptions written before the field).
    recipients: int = 0
    # --- open and click only ---
    # The link's target and its index in the message (click only; -1 otherwise); `remote` is
    # the client's address, `agent` its User-Agent (at most 300 characters).
    link: str = ""
    link_index: int = -1
    agent: str = ""
    # "" when a person is taken to have opened or clicked; otherwise why not, one of
    # MACHINE_REASONS (a plain string: a reason added later still reads here).
    machine: str = ""
    # when the message was sent to the recipient (epoch seconds; 0: not known)
    sent_at: float = 0.0


# Why an open or click is judged a machine's (Event.machine): a mail privacy proxy that loads
# every image on delivery (Apple Mail Privacy Protection), another image prefetch, a
# security scanner by its user agent, a click sooner after delivery than a person reads, or
# clicks on every link of a message at once.
MACHINE_REASONS = ("privacy_proxy", "prefetch", "scanner", "too_soon", "every_link")


def message_fields(env: Envelope) -> dict[str, Any]:
    """The fields every event about a queued message copies from its envelope."""
    return {
        "queue_id": env.queue_id,
        "pool": env.pool,
        "sender": env.sender,
        "routing_key": env.routing_key,
        "message_key": env.message_key,
        "tenant": env.tenant,
        "campaign": env.campaign,
        "tags": env.tags,
    }


def suppressed_event(env: Envelope, recipient: str, *, scope: str, text: str, now: float) -> Event:
    """The `suppressed` event of one recipient of `env`, held by the suppression list in
    `scope` (a scope's label); ingest and delivery both write it."""
    return Event(
        type=EventType.SUPPRESSED,
        ts=now,
        recipient=recipient,
        text=text[:1000],
        reason=scope,
        attempt=env.attempt,
        **message_fields(env),
    )


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode_event(raw: bytes) -> Event:
    return Event.model_validate(load_versioned(raw, VERSION, "event"))
