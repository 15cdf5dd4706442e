"""Queue records: one message for the recipients of one destination. The envelope travels in a
Kafka record header, the value is the raw message; queue ids are ULIDs.

Fields are added within version 1 only when they are optional with a default that means what
a record without them meant: an older reader ignores them (`extra="ignore"`) and an older
record reads as the default. `held` came that way: "" is what every earlier record was.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mailsluice.contracts.versioning import load_versioned

VERSION = 1

# Kafka record header carrying the envelope of a queue record (value = raw message bytes).
ENVELOPE_HEADER = "ms-envelope"

# `X-Mailsluice-Id: <queue id>; pool=<pool>` in every queued message (ingest puts it right below
# its Received header, the HTTP API among the fields it writes): a feedback-loop report quotes
# the original header, and this is how a complaint finds its message and pool (ingest
# feedback.py). A client's own copy is taken out, so ours is the only one.
ID_HEADER = "X-Mailsluice-Id"


def id_field_value(queue_id: str, pool: str, *, tenant: str = "", campaign: str = "") -> str:
    """The value of the X-Mailsluice-Id field of a message: `<queue id>; pool=<pool>`, then
    `; tenant=<t>` and `; campaign=<c>` when it has them. A feedback-loop report quotes it
    back, and its complaint finds the message, pool, tenant and campaign by it. Tenant and
    campaign names hold no `;`, space or `=` (contracts/suppressions.py, contracts/campaigns.py)."""
    value = f"{queue_id}; pool={pool}"
    for name, given in (("tenant", tenant), ("campaign", campaign)):
        if given:
            value += f"; {name}={given}"
    return value


def id_field_params(value: str) -> dict[str, str]:
    """The `name=value` parameters after the queue id of an X-Mailsluice-Id value (names
    lower-cased; not checked: a report can say anything)."""
    params: dict[str, str] = {}
    for part in value.split(";")[1:]:
        name, eq, given = part.partition("=")
        if eq and name.strip():
            params.setdefault(name.strip().lower(), given.strip())
    return params


Stream = Literal["transactional", "bulk"]

# What Envelope.tracking can ask for: nothing, opens only, clicks only, or both. A plain string
# in the record: a value this reader does not know means "as the pool says".
TRACKING = ("off", "opens", "clicks", "all")


class Envelope(BaseModel):
    """The envelope of one queue record: one message for the recipients of one destination."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = VERSION
    queue_id: str
    pool: str
    stream: Stream = "bulk"
    sender: str  # "" is the null reverse-path
    recipients: tuple[str, ...]
    routing_key: str
    received_at: float
    attempt: int = 0  # delivery attempts already made
    not_before: float = 0.0  # epoch seconds; a retry record is not due before this
    last_error: str = ""
    # Why a record waits on a delay topic: "" for a failure retry (tried, and `last_error` is
    # the remote's reply), otherwise the shaping hold that deferred it untried ("suspended",
    # "blocked", "throttled", "warmup"; `last_error` then says why in words). A plain string,
    # not a closed set, so a reason added later still reads here. `destinations resume`
    # releases the held records and leaves failure retries on their schedule.
    held: str = ""
    user: str = ""  # authenticated user or trusted network name, for audit
    # The message as its client sent it (ingest.message.message_key): a client that sends the
    # same message again after a 451 makes a new record with the same key, and delivery sends
    # each recipient one of them. "" (records from before it): the queue id stands in.
    message_key: str = ""
    # Who the message is sent for and which list or campaign it belongs to: the scopes of a
    # suppression (contracts/suppressions.py) and what an unsubscribe token names. "" when
    # ingest knew neither.
    tenant: str = ""
    list_id: str = ""
    # What the sender reports the message under (contracts/campaigns.py): the campaign's stats
    # and every event of the message carry them. Set by the HTTP API, or over SMTP by the
    # X-Mailsluice-Campaign and X-Mailsluice-Tags fields (taken out before sending).
    campaign: str = ""
    tags: tuple[str, ...] = ()
    # Open and click tracking asked for this message (TRACKING): "" leaves it to the pool's
    # setting, as every record before the field did.
    tracking: str = ""
    # How engaged its recipients are (contracts/engagement.py grades, the highest of the
    # message's recipients): a warming pool spends its daily cap on higher grades first.
    # 0: not graded.
    grade: int = 0

    @property
    def dedup_id(self) -> str:
        """What delivery's dedup knows this message by, with each recipient."""
        return self.message_key or self.queue_id


def encode_envelope(env: Envelope) -> bytes:
    return env.model_dump_json().encode()


def decode_envelope(raw: bytes) -> Envelope:
    return Envelope.model_validate(load_versioned(raw, VERSION, "envelope"))


def envelope_from_headers(headers: Any) -> Envelope:
    """Find and decode the envelope among a Kafka record's headers."""
    for name, value in headers or ():
        if name == ENVELOPE_HEADER:
            return decode_envelope(value)
    raise ValueError(f"record has no {ENVELOPE_HEADER} header")


# --- queue ids ----------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_queue_id(now: float | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32, sortable by time."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
