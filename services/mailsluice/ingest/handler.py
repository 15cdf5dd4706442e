"""aiosmtpd handler hooks: thin adapters from SMTP commands to plain functions.

RCPT asks verdicts.judge_recipient() (suppressed in the scopes known then: global, the client's
tenant, the sender's domain), then the tenant's quota (quotas.py; charged once DATA is acked).
DATA asks plan.py for the plan of the transaction (plan_message, whose recipients suppressed
for the message's list scopes.py takes out, or plan_feedback for a feedback-loop report), hands
it to the one publish step (publish.publish_plan: 250 only once every write is acknowledged)
and settles the outcome: metrics counted, events emitted, log lines written, the reply returned.

A transaction either queues mail or, when its recipients are feedback-loop addresses, carries
one ARF report: its complaints become events, never mail to deliver. The two kinds never share
a transaction (452 4.5.3)."""

from __future__ import annotations

import logging
import time

from aiosmtpd.smtp import AuthResult, Envelope, Session
from prometheus_client import Counter

from mailsluice.contracts.engagement import Grader
from mailsluice.contracts.envelope import new_queue_id
from mailsluice.contracts.limits import DEFAULT_MAX_MESSAGE_SIZE
from mailsluice.contracts.suppressions import scopes_for
from mailsluice.ingest import replies
from mailsluice.ingest.addresses import check_mailbox
from mailsluice.ingest.auth import User
from mailsluice.ingest.grading import graded
from mailsluice.ingest.message import SINGLE_FIELDS
from mailsluice.ingest.plan import (
    Client,
    Count,
    Metric,
    Outcome,
    Plan,
    PoolPolicy,
    Transaction,
    plan_feedback,
    plan_message,
    rejection_event,
    reverse_path,
)
from mailsluice.ingest.publish import Publisher, publish_plan
from mailsluice.ingest.quotas import TenantQuotas
from mailsluice.ingest.scopes import screen_list, tenant_of
from mailsluice.ingest.session import IngestEnvelope, IngestSMTP
from mailsluice.ingest.smtp_auth import SmtpAuth
from mailsluice.ingest.unsubscribe import UnsubscribeDesk, plan_unsubscribe
from mailsluice.ingest.verdicts import (
    IsSuppressed,
    MxLookup,
    judge_recipient,
    judge_sender,
    rejected,
)
from mailsluice.metrics.ingest import INGEST_COMPLAINTS, INGEST_FEEDBACK_REJECTED
from mailsluice.metrics.ingest import Ingest as metrics
from mailsluice.policy.owners import UNRESTRICTED, OwnedDomains
from mailsluice.policy.rollup import Rollup

log = logging.getLogger(__name__)

COUNTERS: dict[Metric, Counter] = {
    "transactions": metrics.TRANSACTIONS,
    "recipients": metrics.RECIPIENTS,
    "bytes": metrics.BYTES,
    "complaints": INGEST_COMPLAINTS,
    "feedback_rejected": INGEST_FEEDBACK_REJECTED,
    "senders_not_owned": metrics.SENDERS_NOT_OWNED,
}


def count(item: Count) -> None:
    counter = COUNTERS[item.metric]
    (counter.labels(*item.labels) if item.labels else counter).inc(item.amount)


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
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        auth: SmtpAuth | None = None,
        trusted_domains: OwnedDomains = UNRESTRICTED,
        single_fields: frozenset[str] = frozenset(SINGLE_FIELDS),
        allow_private_destinations: bool = False,
        unsubscribe: UnsubscribeDesk | None = None,
        trusted_tenant: str = "",
        quotas: TenantQuotas | None = None,
        grade: Grader | None = None,
    ) -> None:
        self.hostname = hostname
        self.publisher = publisher
        self.is_suppressed = is_suppressed
        self.mx_lookup = mx_lookup
        self.rollup = rollup
        self.max_recipients = max_recipients
        self.pools = pools
        self.feedback_addresses = feedback_addresses  # lower-cased
        self.max_message_size = max_message_size
        self.auth = auth
        self.trusted_domains = trusted_domains  # of unauthenticated trusted-network clients
        self.in_data = 0  # DATA transactions being published now
        self.single_fields = single_fields  # header fields allowed once (lower-case)
        self.allow_private_destinations = allow_private_destinations
        self.unsubscribe = unsubscribe  # the List-Unsubscribe mailto address, when configured
        self.trusted_tenant = trusted_tenant  # of unauthenticated trusted-network clients
        self.quotas = quotas  # tenants' hourly and daily quotas (quotas.py)
        self.grade = grade  # recipients' engagement grade (mailsluice/engagement/store.py)

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
        return [*responses, *replies.EHLO_EXTENSIONS, last]

    async def handle_MAIL(
        self,
        server: IngestSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        assert isinstance(envelope, IngestEnvelope)
        owned, who = self.owner(server, session)
        verdict = judge_sender(reverse_path(address), owned, who)
        if not verdict.accepted:
            metrics.SENDERS_NOT_OWNED.labels("envelope").inc()
            return verdict.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.txn = Transaction(
            new_queue_id(), time.monotonic(), time.time(), sender=reverse_path(address)
        )
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
        if self.unsubscribe is not None and (
            self.unsubscribe.token_of(address) is not None
            or any(self.unsubscribe.token_of(r) is not None for r in envelope.rcpt_tos)
        ):
            return self._unsubscribe_rcpt(server, envelope, address, rcpt_options)
        tenant = self.tenant(server, session)
        verdict = await judge_recipient(
            address,
            accepted_so_far=len(envelope.txn.routing),
            max_recipients=self.max_recipients,
            is_suppressed=self.is_suppressed,
            mx_lookup=self.mx_lookup,
            rollup=self.rollup,
            allow_private=self.allow_private_destinations,
            scopes=scopes_for(tenant=tenant, sender=txn.sender),
        )
        if verdict.accepted and self.quotas is not None and address not in txn.routing:
            over = self.quotas.judge(tenant, len(txn.routing))
            verdict = verdict if over is None else rejected(over, "over_quota")
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
            plan = self.plan(server, session, txn, envelope.original_content or b"")
            outcome = await publish_plan(self.publisher, plan)
            if self.quotas is not None and outcome is plan.outcome:
                self.quotas.charge(plan)  # acknowledged (or nothing to write: charges none)
            self.settle(outcome)
            return outcome.reply
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

    # aiosmtpd handler AUTH mechanisms: they replace its built-in PLAIN and LOGIN.
    async def auth_PLAIN(self, server: IngestSMTP, args: list[str]) -> AuthResult:
        return (
            await self.auth.plain(server, args)
            if self.auth
            else AuthResult(success=False, handled=False)
        )

    async def auth_LOGIN(self, server: IngestSMTP, args: list[str]) -> AuthResult:
        return (
            await self.auth.login(server, args)
            if self.auth
            else AuthResult(success=False, handled=False)
        )

    # --- the work -----------------------------------------------------------------------------

    def plan(self, server: IngestSMTP, session: Session, txn: Transaction, content: bytes) -> Plan:
        now = time.time()
        if txn.feedback:
            return plan_feedback(
                txn, content, rollup=self.rollup, served_pools=self.pools.served_pools, now=now
            )
        rcpts = server.envelope.rcpt_tos if server.envelope is not None else []
        claims = self.unsubscribe.claims(rcpts) if self.unsubscribe else []
        if claims:
            return plan_unsubscribe(claims, txn, now)
        client = Client(
            helo=session.host_name or "",
            peer_ip=server.conn.peer_ip,
            protocol=protocol_name(session),
            user=session.auth_data if isinstance(session.auth_data, User) else None,
            trusted_network=server.conn.trusted_network,
            domains=self.owner(server, session)[0],
            tenant=self.tenant(server, session),
            tracking=session.auth_data.tracking if isinstance(session.auth_data, User) else "",
        )
        plan = plan_message(
            txn,
            content,
            client,
            hostname=self.hostname,
            pools=self.pools,
            now=now,
            max_size=self.max_message_size,
            single_fields=self.single_fields,
        )
        screened = screen_list(plan, self.is_suppressed, now=now)
        return graded(screened, self.grade) if self.grade is not None else screened

    def owner(self, server: IngestSMTP, session: Session) -> tuple[OwnedDomains, str]:
        """The sender domains of the client, and who it is: an authenticated user's own; a
        trusted network's the configured ones; a stranger (only feedback reports) any."""
        if isinstance(session.auth_data, User):
            return session.auth_data.domains, session.auth_data.name
        if server.conn.trusted_network:
            return self.trusted_domains, f"trusted:{server.conn.trusted_network}"
        return UNRESTRICTED, ""

    def tenant(self, server: IngestSMTP, session: Session) -> str:
        """Who the client sends for (scopes.py): its AUTH user's tenant, a trusted network's
        configured one, else none."""
        user = session.auth_data if isinstance(session.auth_data, User) else None
        network = server.conn.trusted_network
        return tenant_of(user, trusted_network=network, trusted_tenant=self.trusted_tenant)

    def settle(self, outcome: Outcome) -> None:
        """Count, emit and log what an outcome says (its reply goes back to aiosmtpd)."""
        for item in outcome.counts:
            count(item)
        for event in outcome.events:
            self.publisher.emit(event)
        for note in outcome.notes:
            log.info("%s", note.text, extra=note.extra)

    def record_rejection(self, server: IngestSMTP, recipient: str, reply: str, reason: str) -> None:
        envelope = server.envelope
        txn = envelope.txn if isinstance(envelope, IngestEnvelope) else None
        queue_id, sender = (txn.queue_id, txn.sender) if txn else ("", "")
        event = rejection_event(queue_id, sender, recipient, reply, reason, now=time.time())
        self.settle(Outcome(reply, (Count("recipients", ("rejected", reason)),), (event,)))

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

    def _unsubscribe_rcpt(
        self, server: IngestSMTP, envelope: IngestEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        """RCPT of a transaction for the List-Unsubscribe mailto address (ingest/unsubscribe.py)."""
        assert self.unsubscribe is not None and envelope.txn is not None
        others = bool(envelope.txn.routing) or any(
            self.unsubscribe.token_of(r) is None for r in envelope.rcpt_tos
        )
        verdict = self.unsubscribe.judge(address, others=others)
        if verdict.reason:
            self.record_rejection(server, address, verdict.reply, verdict.reason)
            return verdict.reply
        metrics.RECIPIENTS.labels("accepted", "").inc()
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return verdict.reply
