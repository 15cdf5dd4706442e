"""The plan of a DATA transaction: a plain function from the transaction so far, the content,
the client, the settings and the clock to what must be written to Kafka and what to answer.

A plan names the queue records (or, for a feedback-loop report, the complaint events) to publish
with acks, and the outcome of each way the transaction can end: the reply, the metrics to count,
the events to emit without waiting and the log lines. publish.publish_plan() carries it out: 250
only once every write is acknowledged, 451 4.3.0 (`UNWRITTEN`) on any failure or timeout. A
refused transaction has nothing to write and answers at once. No sockets, Kafka or aiosmtpd here:
every plan is unit-testable.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Literal

from mailsluice.contracts.envelope import ENVELOPE_HEADER, Stream, encode_envelope
from mailsluice.contracts.envelope import Envelope as QueueEnvelope
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE, record_limit
from mailsluice.contracts.topics import queue_topic
from mailsluice.ingest import replies
from mailsluice.ingest.auth import User
from mailsluice.ingest.controls import Labels, choose_stream, labels_of
from mailsluice.ingest.feedback import FeedbackError, complaint_events, parse_report
from mailsluice.ingest.message import (
    SINGLE_FIELDS,
    Trace,
    display_name,
    header_of,
    message_key,
    normalised_size,
    prepare_message,
)
from mailsluice.ingest.scopes import list_id_of
from mailsluice.ingest.settings import POOL_NAME
from mailsluice.metrics.labels import OTHER, provider_label
from mailsluice.policy.owners import UNRESTRICTED, OwnedDomains, from_header_owned
from mailsluice.policy.rollup import Rollup

# --- the transaction ----------------------------------------------------------------------------


@dataclass
class Transaction:
    """One mail transaction from MAIL to the end of DATA (RCPT verdicts fill it in)."""

    queue_id: str
    started: float  # monotonic
    received_at: float  # epoch
    routing: dict[str, str] = field(default_factory=dict)  # accepted recipient -> routing key
    feedback: list[str] = field(default_factory=list)  # accepted feedback-loop addresses
    sender: str = ""  # the reverse-path, "" for the null path <>


def reverse_path(mail_from: str | None) -> str:
    """The sender as queued and reported: "" for the null reverse-path."""
    return "" if mail_from in (None, "<>") else str(mail_from)


@dataclass(frozen=True)
class Client:
    """Who sends the transaction, as the session knows it."""

    helo: str
    peer_ip: str
    protocol: str  # RFC 3848 `with` keyword
    user: User | None = None  # the authenticated user; None for a trusted network
    trusted_network: str = ""
    domains: OwnedDomains = UNRESTRICTED  # the sender domains it may use (envelope and From:)
    tenant: str = ""  # who it sends for (scopes.py)
    tracking: str = ""  # its tenant's default tracking ("" : the pool's)

    @property
    def audit(self) -> str:
        return self.user.name if self.user else f"trusted:{self.trusted_network}"


@dataclass(frozen=True)
class PoolPolicy:
    """Which pools a sender may use: the header that asks, and the defaults."""

    header: str
    default_pool: str
    trusted_pools: frozenset[str]
    served_pools: frozenset[str]


@dataclass(frozen=True)
class QueueRecord:
    """One record of a queue topic: the message for the recipients of one routing key."""

    topic: str
    key: bytes
    value: bytes
    envelope: QueueEnvelope

    def headers(self) -> list[tuple[str, bytes]]:
        return [(ENVELOPE_HEADER, encode_envelope(self.envelope))]


# --- what a plan says ---------------------------------------------------------------------------

# The ingest counters (metrics/ingest.py) a plan may ask for, by short name.
Metric = Literal[
    "transactions", "recipients", "bytes", "complaints", "feedback_rejected", "senders_not_owned"
]


@dataclass(frozen=True)
class Count:
    """Add `amount` to a counter (with these label values)."""

    metric: Metric
    labels: tuple[str, ...] = ()
    amount: int = 1


@dataclass(frozen=True)
class Note:
    """A log line, with the ids it concerns (JSON log keys; pool None: not given)."""

    text: str
    queue_id: str
    pool: str | None = None

    @property
    def extra(self) -> dict[str, str]:
        ids = {"queue_id": self.queue_id}
        return ids if self.pool is None else {**ids, "pool": self.pool}


@dataclass(frozen=True)
class Outcome:
    """One way a transaction ends."""

    reply: str
    counts: tuple[Count, ...] = ()
    events: tuple[Event, ...] = ()  # emitted without waiting once the reply is decided
    notes: tuple[Note, ...] = ()  # logged at INFO


# Any write not acknowledged in time: the client must retry, so nothing is lost either way.
UNWRITTEN = Outcome(replies.S451_QUEUE_UNAVAILABLE, (Count("transactions", ("tempfail",)),))


@dataclass(frozen=True)
class Plan:
    """What DATA does: publish the records and events, then answer with one of the outcomes."""

    outcome: Outcome  # once every write is acknowledged; at once when there is nothing to write
    records: tuple[QueueRecord, ...] = ()  # queue records, published with acks
    events: tuple[Event, ...] = ()  # events the reply depends on, published with acks
    unwritten: Outcome = UNWRITTEN  # a write failed or timed out
    unwritten_note: Note | None = None  # logged at WARNING with the error

    @property
    def writes(self) -> bool:
        return bool(self.records or self.events)


# --- decisions ----------------------------------------------------------------------------------


def choose_pool(requested: str | None, user: User | None, policy: PoolPolicy) -> str | None:
    """The pool of a message, or None when the sender may not use what it asked for."""
    if user is not None:
        allowed, default = frozenset(user.pools), user.default_pool
    else:
        allowed, default = policy.trusted_pools, policy.default_pool
    pool = requested.strip().lower() if requested is not None else default
    if not POOL_NAME.match(pool) or pool not in allowed or pool not in policy.served_pools:
        return None
    return pool


def group_by_routing_key(routing: dict[str, str]) -> dict[str, list[str]]:
    """Accepted recipients grouped by routing key, each group in RCPT order."""
    groups: dict[str, list[str]] = defaultdict(list)
    for recipient, key in routing.items():
        groups[key].append(recipient)
    return dict(groups)


def rejection_event(
    queue_id: str, sender: str, recipient: str, reply: str, reason: str, *, now: float
) -> Event:
    """The `rejection` event of one refused recipient (at RCPT or DATA)."""
    return Event(
        type=EventType.REJECTION,
        ts=now,
        queue_id=queue_id,
        sender=sender,
        recipient=recipient,
        code=int(replies.code_of(reply)),
        enhanced=replies.enhanced_of(reply),
        text=replies.text_of(reply),
        reason=reason,
    )


def refusal(
    txn: Transaction, reply: str, reason: str, *, now: float, result: str = "rejected"
) -> Plan:
    """Every accepted recipient refused at DATA: nothing to write."""
    recipients = tuple(txn.routing)
    return Plan(
        Outcome(
            reply,
            counts=(
                Count("transactions", (result,)),
                Count("recipients", ("rejected", reason), len(recipients)),
            ),
            events=tuple(
                rejection_event(txn.queue_id, txn.sender, r, reply, reason, now=now)
                for r in recipients
            ),
        )
    )


# --- the plans ----------------------------------------------------------------------------------


def plan_message(
    txn: Transaction,
    content: bytes,
    client: Client,
    *,
    hostname: str,
    pools: PoolPolicy,
    now: float,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    single_fields: frozenset[str] = frozenset(SINGLE_FIELDS),
) -> Plan:
    """DATA of a transaction that queues mail: the message as queued (message.py), its pool and
    stream, and one record per routing key, each carrying the recipients of that key. A field
    of `single_fields` (lower-case) given twice refuses the message.

    Size is judged as queued: a body of bare LFs passes SIZE but doubles once its line ends
    are CRLF. What can never fit (max_size, or one record over the producer's request limit)
    gets 552 5.3.4, a permanent answer: 451 would make the client retry it for ever."""
    if normalised_size(content) > max_size:
        return refusal(txn, replies.S552_TOO_BIG_QUEUED, "too_big", now=now, result="too_big")
    trace = Trace(
        helo=client.helo,
        peer_ip=client.peer_ip,
        hostname=hostname,
        protocol=client.protocol,
        queue_id=txn.queue_id,
        recipients=tuple(txn.routing),
        now=txn.received_at,
    )
    prepared = prepare_message(content, trace, pool_header=pools.header)
    twice = [name for name in prepared.repeated if name in single_fields]
    if twice:
        reply = replies.S550_DUPLICATE_HEADER.format(name=display_name(twice[0]))
        return refusal(txn, reply, "duplicate_header", now=now)
    if not from_header_owned(header_of(prepared.data), client.domains):
        return from_not_owned(txn, client, now=now)
    pool = choose_pool(prepared.pool, client.user, pools)
    if pool is None:
        return refusal(txn, replies.S550_POOL_DENIED, "pool_denied", now=now)
    stream = choose_stream(prepared.stream)
    if stream is None:
        return refusal(txn, replies.S550_BAD_STREAM, "bad_stream", now=now)
    labels = labels_of(prepared, client.tenant, client.tracking)
    if isinstance(labels, str):
        return refusal(txn, labels, "bad_labels", now=now)
    data = prepared.stamped(txn.queue_id, pool, tenant=labels.tenant, campaign=labels.campaign)
    digest = message_key(client.audit, txn.sender, content)
    records = queue_records(
        txn, data, pool=pool, stream=stream, client=client, digest=digest, labels=labels
    )
    if max(record_size(r) for r in records) > record_limit(max_size):
        return refusal(txn, replies.S552_TOO_BIG_QUEUED, "too_big", now=now, result="too_big")
    return Plan(
        queued(txn, data, pool=pool, records=len(records), now=now, labels=labels),
        records,
        unwritten_note=Note("queueing failed", txn.queue_id, pool),
    )


# The record batch around one record (batch header, record varints): well under this.
BATCH_OVERHEAD_BYTES = 1024


def record_size(record: QueueRecord) -> int:
    """What one record takes of the producer's request (max_request_size)."""
    headers = sum(len(name) + len(value) for name, value in record.headers())
    return len(record.value) + len(record.key) + headers + BATCH_OVERHEAD_BYTES


def from_not_owned(txn: Transaction, client: Client, *, now: float) -> Plan:
    """A `From:` header outside the sender's domains (RFC 6409 §6.1): refused, counted."""
    reply = replies.S550_FROM_NOT_OWNED.format(user=client.audit)
    outcome = refusal(txn, reply, "sender_not_owned", now=now).outcome
    counts = (*outcome.counts, Count("senders_not_owned", ("header",)))
    return Plan(replace(outcome, counts=counts))


def queue_records(
    txn: Transaction,
    data: bytes,
    *,
    pool: str,
    stream: Stream,
    client: Client,
    digest: str,
    labels: Labels,
) -> tuple[QueueRecord, ...]:
    """One record per routing key, in RCPT order, each with the recipients of that key."""
    return tuple(
        QueueRecord(
            topic=queue_topic(pool),
            key=key.encode(),
            value=data,
            envelope=QueueEnvelope(
                queue_id=txn.queue_id,
                pool=pool,
                sender=txn.sender,
                recipients=tuple(group),
                routing_key=key,
                received_at=txn.received_at,
                user=client.audit,
                stream=stream,
                message_key=digest,
                **labels.queued(),  # who it is sent for (scopes.py), campaign, tags, tracking
                list_id=list_id_of(data),
            ),
        )
        for key, group in group_by_routing_key(txn.routing).items()
    )


def queued(
    txn: Transaction, data: bytes, *, pool: str, records: int, now: float, labels: Labels
) -> Outcome:
    """The outcome once every queue record of a message is acknowledged."""
    reply = replies.S250_QUEUED.format(queue_id=txn.queue_id)
    reception = Event(
        type=EventType.RECEPTION,
        ts=now,
        queue_id=txn.queue_id,
        pool=pool,
        sender=txn.sender,
        code=int(replies.code_of(reply)),
        enhanced=replies.enhanced_of(reply),
        size=len(data),
        recipients=len(txn.routing),
        **labels.fields(),
    )
    return Outcome(
        reply,
        counts=(Count("transactions", ("queued",)), Count("bytes", amount=len(data))),
        events=(reception,),
        notes=(
            Note(f"queued {len(txn.routing)} recipients in {records} records", txn.queue_id, pool),
        ),
    )


def plan_feedback(
    txn: Transaction, content: bytes, *, rollup: Rollup, served_pools: frozenset[str], now: float
) -> Plan:
    """DATA of a transaction to feedback-loop addresses: one ARF report (feedback.py), its
    complaints written as events with acks before the 250, or a 550 saying why not."""
    try:
        complaints = parse_report(content)
    except FeedbackError as exc:
        return Plan(
            Outcome(
                replies.FEEDBACK_REJECTS[exc.reason],
                counts=(
                    Count("transactions", ("rejected",)),
                    Count("feedback_rejected", (exc.reason,)),
                ),
                notes=(Note(f"feedback report refused: {exc}", txn.queue_id),),
            )
        )
    events = complaint_events(complaints, rollup=rollup, served_pools=served_pools, now=now)
    recorded = Outcome(
        replies.S250_FEEDBACK.format(count=len(events)),
        counts=(
            Count("transactions", ("queued",)),
            *(
                Count("complaints", (e.pool or OTHER, provider_label(e.routing_key)))
                for e in events
            ),
        ),
        notes=tuple(
            Note(f"complaint ({e.reason}) from {e.routing_key}", e.queue_id, e.pool) for e in events
        ),
    )
    return Plan(
        recorded,
        events=tuple(events),
        unwritten_note=Note("complaint events not written", txn.queue_id),
    )
