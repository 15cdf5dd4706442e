"""Mail to the List-Unsubscribe mailto address, `unsubscribe+TOKEN@<unsubscribe domain>`
(RFC 2369): the RCPT verdict on its token and the plan of its DATA.

Like a feedback-loop address it is local delivery, open to any client, and never shares a
transaction with mail to relay (452 4.5.3). A token that does not verify gets 550 5.1.1 at
RCPT; each good one becomes an `unsubscribe` event, written with acks before the 250, the same
event the one-click POST produces. The message itself is read no further. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailsluice.consent.tokens import Claim, KeyRing, TokenError, mailto_token, unsubscribe_event
from mailsluice.ingest import replies
from mailsluice.ingest.plan import Count, Note, Outcome, Plan, Transaction
from mailsluice.metrics.unsubscribe import Unsubscribe as unsubscribe_metrics


@dataclass(frozen=True)
class Verdict:
    reply: str
    reason: str = ""  # the rejection reason (metrics/ingest.py INGEST_REJECT_REASONS); "": ok


@dataclass(frozen=True)
class UnsubscribeDesk:
    domain: str  # lower-cased; "" takes no unsubscribe address
    keys: KeyRing

    def token_of(self, address: str) -> str | None:
        return mailto_token(address, self.domain) if self.domain else None

    def claims(self, addresses: Iterable[str]) -> list[Claim]:
        """The claims of the unsubscribe addresses among `addresses` (accepted at RCPT)."""
        found = []
        for address in addresses:
            token = self.token_of(address)
            if token is not None:
                try:
                    found.append(self.keys.verify(token))
                except TokenError:
                    continue  # refused at RCPT already
        return found

    def judge(self, address: str, *, others: bool) -> Verdict:
        """RCPT of a transaction that holds or asks for an unsubscribe address; `others`: it
        holds recipients of another kind already."""
        token = self.token_of(address)
        if others or token is None:
            return Verdict(replies.S452_UNSUBSCRIBE_SEPARATE, "too_many_recipients")
        try:
            self.keys.verify(token)
        except TokenError as exc:
            unsubscribe_metrics.REQUESTS.labels("mailto", exc.reason).inc()
            return Verdict(replies.S550_BAD_UNSUBSCRIBE, "bad_unsubscribe")
        unsubscribe_metrics.REQUESTS.labels("mailto", "ok").inc()
        return Verdict(replies.S250_RCPT_OK)


def plan_unsubscribe(claims: list[Claim], txn: Transaction, now: float) -> Plan:
    """DATA of a transaction to unsubscribe addresses: their events, acked before the 250."""
    events = tuple(unsubscribe_event(c, "mailto", now) for c in claims)
    recorded = Outcome(
        replies.S250_UNSUBSCRIBED.format(count=len(events)),
        counts=(Count("transactions", ("queued",)),),
        notes=tuple(Note(f"unsubscribe (mailto) in {e.scope}", txn.queue_id) for e in events),
    )
    return Plan(
        recorded, events=events, unwritten_note=Note("unsubscribe events not written", txn.queue_id)
    )
