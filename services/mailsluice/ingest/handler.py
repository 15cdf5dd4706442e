"""aiosmtpd handler hooks: thin adapters from SMTP commands to the plain functions of
verdicts, message, feedback and publish.

A transaction either queues mail or, when its recipients are feedback-loop addresses, carries
one ARF report: that is parsed (feedback.py) into complaint events, written with acks before the
250, and never queued for delivery. The two kinds never share a transaction (452 4.5.3)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from mailsluice.contracts.envelope import Envelope as QueueEnvelope
from mailsluice.contracts.envelope import Stream, new_queue_id
from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.topics import queue_topic
from mailsluice.ingest import replies
from mailsluice.ingest.addresses import check_mailbox
from mailsluice.ingest.auth import User
from mailsluice.ingest.feedback import FeedbackError, complaint_events, parse_report
from mailsluice.ingest.message import Trace, prepare_message
from mailsluice.ingest.publish import Publisher, PublishError, QueueRecord
from mailsluice.ingest.session import IngestEnvelope, IngestSMTP, Transaction
from mailsluice.ingest.settings import POOL_NAME
from mailsluice.ingest.verdicts import IsSuppressed, MxLookup, judge_recipient
from mailsluice.metrics.ingest import INGEST_COMPLAINTS, INGEST_FEEDBACK_REJECTED
from mailsluice.metrics.ingest import Ingest as metrics
from mailsluice.metrics.labels import OTHER, provider_label
from mailsluice.policy.rollup import Rollup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolPolicy:
    header: str
    default_pool: str
    trusted_pools: frozenset[str]
    served_pools: frozenset[str]


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


def protocol_name(session: Session) -> str:
    """RFC 3848 `with` keyword."""
    if not session.extended_smtp:
        return "SMTP"
    return (
        "ESMTP" + ("S" if session.ssl is not None else "") + ("A" if session.authenticated else "")
    )


class IngestHandler:
    def __init__(
        self,
        *,
        hostname: str,
        publisher: Publisher,
        is_suppressed: IsSuppressed,
        mx_lookup: MxLookup,
        rollup: Rollup,
        max_recipients: int,
        pools: PoolPolicy,
        feedback_addresses: frozenset[str] = frozenset(),
    ) -> None:
        self.hostname = hostname
        self.publisher = publisher
        self.is_suppressed = is_suppressed
        self.mx_lookup = mx_lookup
        self.rollup = rollup
        self.max_recipients = max_recipients
        self.pools = pools
        self.feedback_addresses = feedback_addresses  # lower-cased
        self.in_data = 0  # DATA transactions being published now

    # --- hooks --------------------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: IngestSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        last = responses.pop()  # "250 HELP"
        responses += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", last]
        return responses

    async def handle_MAIL(
        self,
        server: IngestSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        assert isinstance(envelope, IngestEnvelope)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.txn = Transaction(new_queue_id(), time.monotonic(), time.time())
        return replies.S250_SENDER_OK

    async def handle_RCPT(
        self,
        server: IngestSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        assert isinstance(envelope, IngestEnvelope) and envelope.txn is not None
        address = check_mailbox(address)  # already validated; this lower-cases the domain
        txn = envelope.txn
        if address.lower() in self.feedback_addresses or txn.feedback:
            return self._feedback_rcpt(server, envelope, txn, address, rcpt_options)
        verdict = await judge_recipient(
            address,
            accepted_so_far=len(envelope.txn.routing),
            max_recipients=self.max_recipients,
            is_suppressed=self.is_suppressed,
            mx_lookup=self.mx_lookup,
            rollup=self.rollup,
        )
        if not verdict.accepted:
            self.record_rejection(server, address, verdict.reply, verdict.reason)
            return verdict.reply
        metrics.RECIPIENTS.labels("accepted", "").inc()
        if address not in envelope.txn.routing:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            envelope.txn.routing[address] = verdict.routing_key
        return verdict.reply

    async def handle_DATA(self, server: IngestSMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, IngestEnvelope) and envelope.txn is not None
        txn = envelope.txn
        self.in_data += 1
        try:
            if txn.feedback:
                return await self._accept_feedback(envelope, txn)
            return await self._accept_message(server, session, envelope, txn)
        except Exception:
            metrics.TRANSACTIONS.labels("tempfail").inc()
            log.exception("DATA failed", extra={"queue_id": txn.queue_id})
            return replies.S451_TEMPFAIL
        finally:
            self.in_data -= 1
            server.conn.messages += 1
            metrics.TRANSACTION_SECONDS.observe(time.monotonic() - txn.started)

    async def handle_exception(self, error: Exception) -> str:
        log.error("unexpected error in the SMTP session", exc_info=error)
        return replies.S451_TEMPFAIL

    # --- the work -----------------------------------------------------------------------------

    def record_rejection(self, server: IngestSMTP, recipient: str, reply: str, reason: str) -> None:
        metrics.RECIPIENTS.labels("rejected", reason).inc()
        envelope = server.envelope
        txn = envelope.txn if isinstance(envelope, IngestEnvelope) else None
        sender = (envelope.mail_from or "") if envelope is not None else ""
        self.publisher.emit(
            Event(
                type=EventType.REJECTION,
                queue_id=txn.queue_id if txn else "",
                sender="" if sender == "<>" else sender,
                recipient=recipient,
                code=int(replies.code_of(reply)),
                enhanced=replies.enhanced_of(reply),
                text=replies.text_of(reply),
                reason=reason,
            )
        )

    def _feedback_rcpt(
        self,
        server: IngestSMTP,
        envelope: IngestEnvelope,
        txn: Transaction,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """RCPT of a transaction for feedback addresses: no suppression or DNS verdict (the
        address is ours), but never mixed with recipients to relay to."""
        if txn.routing or address.lower() not in self.feedback_addresses:
            reply = replies.S452_FEEDBACK_SEPARATE
            self.record_rejection(server, address, reply, "too_many_recipients")
            return reply
        metrics.RECIPIENTS.labels("accepted", "").inc()
        if address not in txn.feedback:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            txn.feedback.append(address)
        return replies.S250_RCPT_OK

    async def _accept_feedback(self, envelope: IngestEnvelope, txn: Transaction) -> str:
        """One feedback-loop report: its complaints on the events topic (acked), or 550."""
        try:
            complaints = parse_report(envelope.original_content or b"")
        except FeedbackError as exc:
            metrics.TRANSACTIONS.labels("rejected").inc()
            INGEST_FEEDBACK_REJECTED.labels(exc.reason).inc()
            log.info("feedback report refused: %s", exc, extra={"queue_id": txn.queue_id})
            return replies.FEEDBACK_REJECTS[exc.reason]
        events = complaint_events(
            complaints, rollup=self.rollup, served_pools=self.pools.served_pools
        )
        try:
            await self.publisher.publish_events(events)
        except PublishError as exc:
            metrics.TRANSACTIONS.labels("tempfail").inc()
            log.warning("complaint events not written (%s)", exc, extra={"queue_id": txn.queue_id})
            return replies.S451_QUEUE_UNAVAILABLE
        metrics.TRANSACTIONS.labels("queued").inc()
        for event in events:
            pool = event.pool or OTHER
            provider = provider_label(event.routing_key)
            INGEST_COMPLAINTS.labels(pool, provider).inc()
            log.info(
                "complaint (%s) from %s",
                event.reason,
                event.routing_key,
                extra={"queue_id": event.queue_id, "pool": event.pool},
            )
        return replies.S250_FEEDBACK.format(count=len(events))

    async def _accept_message(
        self, server: IngestSMTP, session: Session, envelope: IngestEnvelope, txn: Transaction
    ) -> str:
        raw = envelope.original_content or b""
        sender = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        recipients = tuple(txn.routing)
        trace = Trace(
            helo=session.host_name or "",
            peer_ip=server.conn.peer_ip,
            hostname=self.hostname,
            protocol=protocol_name(session),
            queue_id=txn.queue_id,
            recipients=recipients,
            now=txn.received_at,
        )
        prepared = prepare_message(raw, trace, pool_header=self.pools.header)
        user = session.auth_data if isinstance(session.auth_data, User) else None
        pool = choose_pool(prepared.pool, user, self.pools)
        if pool is None:
            metrics.TRANSACTIONS.labels("rejected").inc()
            for recipient in recipients:
                self.record_rejection(server, recipient, replies.S550_POOL_DENIED, "pool_denied")
            return replies.S550_POOL_DENIED
        stream = choose_stream(prepared.stream)
        if stream is None:
            metrics.TRANSACTIONS.labels("rejected").inc()
            for recipient in recipients:
                self.record_rejection(server, recipient, replies.S550_BAD_STREAM, "bad_stream")
            return replies.S550_BAD_STREAM
        audit = user.name if user else f"trusted:{server.conn.trusted_network}"
        data = prepared.stamped(txn.queue_id, pool)
        records = [
            QueueRecord(
                topic=queue_topic(pool),
                key=key.encode(),
                value=data,
                envelope=QueueEnvelope(
                    queue_id=txn.queue_id,
                    pool=pool,
                    sender=sender,
                    recipients=tuple(group),
                    routing_key=key,
                    received_at=txn.received_at,
                    user=audit,
                    stream=stream,
                ),
            )
            for key, group in group_by_routing_key(txn.routing).items()
        ]
        try:
            await self.publisher.publish(records)
        except PublishError as exc:
            metrics.TRANSACTIONS.labels("tempfail").inc()
            log.warning("queueing failed (%s)", exc, extra={"queue_id": txn.queue_id, "pool": pool})
            return replies.S451_QUEUE_UNAVAILABLE
        metrics.TRANSACTIONS.labels("queued").inc()
        metrics.BYTES.inc(len(data))
        self.publisher.emit(
            Event(
                type=EventType.RECEPTION,
                queue_id=txn.queue_id,
                pool=pool,
                sender=sender,
                code=250,
                enhanced="2.0.0",
                size=len(data),
            )
        )
        log.info(
            "queued %d recipients in %d records",
            len(recipients),
            len(records),
            extra={"queue_id": txn.queue_id, "pool": pool},
        )
        return replies.S250_QUEUED.format(queue_id=txn.queue_id)


def make_authenticator(credentials: Any) -> Any:
    """aiosmtpd authenticator over a Credentials store (PLAIN and LOGIN both give a
    LoginPassword)."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(
        server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            login = auth_data.login.decode("utf-8")
            password = auth_data.password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        user = credentials.authenticate(login, password)
        if user is None:
            log.info("AUTH %s failed", mechanism)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)

    return authenticator
