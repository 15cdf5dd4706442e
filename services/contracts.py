"""Contracts between Mailsluice services: topics, records, event types, metric names.

Every service reads and writes Kafka only through these shapes; services never import each
other. A change to a record's shape bumps SCHEMA_VERSION; readers accept older versions they
know and refuse newer ones (the record stays on the topic for a newer reader).
"""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# --- topics -----------------------------------------------------------------------------------

TOPIC_PREFIX = "mailsluice"
EVENTS_TOPIC = f"{TOPIC_PREFIX}.events"
SUPPRESSIONS_TOPIC = f"{TOPIC_PREFIX}.suppressions"
DEFAULT_POOL = "default"

# Delay tiers for retries: (name, delay in seconds). A retry goes to the largest tier not
# longer than the wanted delay, so a message never comes back later than asked by more than
# the mover's poll interval.
RETRY_TIERS: tuple[tuple[str, int], ...] = (
    ("1m", 60),
    ("10m", 600),
    ("1h", 3600),
)

# Kafka record header carrying the envelope of a queue record (value = raw message bytes).
ENVELOPE_HEADER = "ms-envelope"


def queue_topic(pool: str) -> str:
    return f"{TOPIC_PREFIX}.queue.{pool}"


def retry_topic(tier: str) -> str:
    return f"{TOPIC_PREFIX}.retry.{tier}"


def consumer_group(pool: str) -> str:
    return f"{TOPIC_PREFIX}.delivery.{pool}"


# --- queue records ------------------------------------------------------------------------------

Stream = Literal["transactional", "bulk"]


class Envelope(BaseModel):
    """The envelope of one queue record: one message for the recipients of one destination."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = SCHEMA_VERSION
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
    user: str = ""  # authenticated user or trusted network name, for audit


def encode_envelope(env: Envelope) -> bytes:
    return env.model_dump_json().encode()


def decode_envelope(raw: bytes) -> Envelope:
    data = json.loads(raw)
    version = int(data.get("v", 0))
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"envelope schema v{version} is newer than this reader (v{SCHEMA_VERSION})"
        )
    return Envelope.model_validate(data)


def envelope_from_headers(headers: Any) -> Envelope:
    """Find and decode the envelope among a Kafka record's headers."""
    for name, value in headers or ():
        if name == ENVELOPE_HEADER:
            return decode_envelope(value)
    raise ValueError(f"record has no {ENVELOPE_HEADER} header")


# --- events -------------------------------------------------------------------------------------


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


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = SCHEMA_VERSION
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


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode_event(raw: bytes) -> Event:
    data = json.loads(raw)
    if int(data.get("v", 0)) > SCHEMA_VERSION:
        raise ValueError("event schema is newer than this reader")
    return Event.model_validate(data)


# --- suppressions -------------------------------------------------------------------------------


class Suppression(BaseModel):
    """Value of a mailsluice.suppressions record; key = address lower-cased; a null value
    (tombstone) removes the entry."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = SCHEMA_VERSION
    address: str
    reason: str = "manual"
    source: str = "cli"
    ts: float = Field(default_factory=time.time)


def suppression_key(address: str) -> bytes:
    return address.strip().lower().encode()


def encode_suppression(entry: Suppression) -> bytes:
    return entry.model_dump_json().encode()


def decode_suppression(raw: bytes) -> Suppression:
    return Suppression.model_validate_json(raw)


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


# --- metric names -------------------------------------------------------------------------------
# Names are mailsluice_<component>_<thing>_<unit|total>; labels come from closed sets only.

METRIC_PREFIX = "mailsluice"
INGEST_REJECT_REASONS = (
    "syntax",
    "suppressed",
    "null_mx",
    "no_domain",
    "dns_timeout",
    "too_many_recipients",
    "relay_denied",
    "auth_required",
    "pool_denied",
    "bad_stream",
)


# --- shaping: warm-up ledger and destination control (added by the shaping helper) --------------
# Both compacted. mailsluice.warmup: key "<pool>/<source>/<scope>", value JSON usage of the
# current warm-up period (services/delivery/warmup.py). mailsluice.control: key
# "<pool>/<routing key>", value JSON operator command for a destination, a null value clears it
# (services/delivery/destinations_cli.py).
WARMUP_TOPIC = f"{TOPIC_PREFIX}.warmup"
CONTROL_TOPIC = f"{TOPIC_PREFIX}.control"
