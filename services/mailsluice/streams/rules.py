"""Which events suppress a recipient: pure functions of one event and the address's state.

- A hard bounce (the mailbox or its domain does not exist, the mailbox is disabled) suppresses
  at once, as every ESP does: a second try cannot succeed and hurts the sender's reputation.
- A complaint (feedback-loop report) suppresses at once: Gmail's bulk-sender rules hold the
  complaint rate under 0.3%, and the recipient said so.
- Policy rejections (RFC 3463 X.7.x, spam, block lists, reputation, DMARC) never suppress: the
  recipient exists, the sender is the problem. Suppressing would erase a whole provider's
  recipients during one IP-reputation incident.
- Soft failures count, at most once per address per UTC day, and only as evidence that the
  mailbox is dead: an expiration (a message that failed for the whole retry period, any cause
  but policy), a mailbox-full or mailbox-status failure (X.2.x, 4.1.x). Retries of one message
  and a burst of messages on one day count once, so a mailbox that is full for an afternoon
  does not get suppressed. `threshold` such days within `window_days` suppress the address
  ("repeated-soft-bounce"); any delivery clears the days up to it. Defaults 5 in 30 days: with
  daily or weekly sending that is weeks of a mailbox refusing everything, close to what
  Mailchimp does (7 soft bounces) and well past a holiday's full mailbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from mailsluice.contracts.events import Event, EventType
from mailsluice.contracts.suppressions import Scope

HARD_BOUNCE = "hard-bounce"
COMPLAINT = "complaint"
REPEATED_SOFT = "repeated-soft-bounce"
# The recipient unsubscribed (one-click or mailto): suppressed in the scope its token names.
UNSUBSCRIBE = "unsubscribe"
REASONS = (HARD_BOUNCE, COMPLAINT, REPEATED_SOFT, UNSUBSCRIBE)

DAY_S = 86400

Failure = Literal["hard", "policy", "mailbox", "other"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
# RFC 3463 X.1.x addressing codes that mean the recipient address is dead. X.1.7 and X.1.8 are
# about the sender's address, X.1.4/X.1.5 are not failures of the recipient.
_HARD_ADDRESS_DETAILS = frozenset({0, 1, 2, 3, 6, 10})
# Bounce-class names a classifier may put in Event.reason (PowerMTA's categories).
_HARD_CLASSES = frozenset({"bad-mailbox", "bad-domain", "inactive-mailbox", HARD_BOUNCE})
_POLICY_CLASSES = frozenset(
    {"spam-related", "policy-related", "content-related", "relaying-issues", "virus-related"}
)
_MAILBOX_CLASSES = frozenset({"quota-issues"})

_POLICY_TEXT = re.compile(
    r"\b(spam\w*|block\s?list\w*|black\s?list\w*|blocked|rbl|dnsbl|spamhaus|reputation|"
    r"polic(y|ies)|dmarc|spf|dkim|banned|relay(ing)?|abuse|suspicious|rate.?limit\w*|"
    r"too many)\b",
    re.IGNORECASE,
)
_HARD_TEXT = re.compile(
    r"(user unknown|unknown user|no such (user|mailbox|recipient|address|account)|"
    r"(mailbox|recipient|user|address|account) (does not|doesn't|not) exist|"
    r"(recipient|mailbox|user|address) not found|unknown (recipient|mailbox|address)|"
    r"invalid (recipient|mailbox|address)|not a valid (recipient|mailbox|address)|"
    r"(mailbox|account) (is |has been )?(disabled|deactivated|closed|inactive)|"
    r"recipient address rejected)",
    re.IGNORECASE,
)
_QUOTA_TEXT = re.compile(
    r"(over quota|quota exceeded|mailbox (is )?full|insufficient (storage|space)|"
    r"exceeded (its|the) storage)",
    re.IGNORECASE,
)


def classify(code: int, enhanced: str, text: str, reason: str = "") -> Failure:
    """The class of a failed reply: hard (the address is dead), policy (the sender's problem),
    mailbox (full or temporarily unavailable) or other. A specific enhanced code decides; the
    text is read only when there is none or it is X.0.0 (or an unassigned subject)."""
    label = reason.strip().lower()
    if label in _HARD_CLASSES:
        return "hard"
    if label in _POLICY_CLASSES:
        return "policy"
    if label in _MAILBOX_CLASSES:
        return "mailbox"
    permanent = code >= 500 or enhanced.startswith("5.")
    found = _ENHANCED.match(enhanced.strip())
    if found is not None:
        by_code = _classify_enhanced(int(found.group(2)), int(found.group(3)), permanent)
        if by_code is not None:
            return by_code
    return _classify_text(text, permanent)


def _classify_enhanced(subject: int, detail: int, permanent: bool) -> Failure | None:
    """By RFC 3463 subject and detail; None where only the text can tell: X.0.x, unassigned
    subjects and X.4.1 (Microsoft's "Recipient address rejected: Access denied")."""
    if subject == 7:
        return "policy"
    if subject == 1:
        if detail in (7, 8):
            return "other"  # the sender's address, not the recipient's
        if not permanent:
            return "mailbox"
        return "hard" if detail in _HARD_ADDRESS_DETAILS else "other"
    if subject == 2:
        if detail == 1 and permanent:
            return "hard"  # X.2.1: mailbox disabled, not accepting messages
        return "mailbox" if detail in (0, 1, 2) else "other"  # X.2.2: mailbox full
    if subject == 4 and detail == 1:
        return None
    if subject in (3, 4, 5, 6):
        return "other"
    return None


def _classify_text(text: str, permanent: bool) -> Failure:
    if _POLICY_TEXT.search(text):
        return "policy"
    if _QUOTA_TEXT.search(text):
        return "mailbox"
    if permanent and _HARD_TEXT.search(text):
        return "hard"
    return "other"


def event_failure(event: Event) -> Failure:
    return classify(event.code, event.enhanced, event.text, event.reason)


# --- per-address soft-failure state ------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    threshold: int = 5  # days with a soft failure that suppress
    window_days: int = 30  # ... within this many days
    count_deferrals: bool = True  # mailbox-class deferrals count, not only expirations


@dataclass(frozen=True)
class SoftState:
    """UTC days (days since the epoch) on which the address had a counted soft failure."""

    days: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"days": list(self.days)}

    @classmethod
    def from_json(cls, data: Any) -> SoftState:
        if not isinstance(data, dict):
            return cls()
        days = data.get("days") or ()
        return cls(tuple(sorted({int(d) for d in days if isinstance(d, int | float)})))


@dataclass(frozen=True)
class Decision:
    """What to do for one event: suppress (with a reason) and/or change the state. `state`
    None with `changed` means forget the address's state."""

    suppress: str | None = None
    state: SoftState | None = None
    changed: bool = False
    scope: str = "global"  # the label of the scope `suppress` applies in


KEEP = Decision()
FORGET = Decision(changed=True)


def day_of(ts: float) -> int:
    return int(ts // DAY_S)


def relevant(event: Event) -> bool:
    """Whether an event can change an address's suppression or state (worth routing)."""
    return bool(event.recipient.strip()) and event.type in (
        EventType.BOUNCE,
        EventType.COMPLAINT,
        EventType.DELIVERY,
        EventType.EXPIRATION,
        EventType.TRANSIENT_FAILURE,
        EventType.UNSUBSCRIBE,
    )


def decide(event: Event, state: SoftState | None, policy: Policy) -> Decision:
    """The decision for one event about its recipient, given the recipient's current state."""
    if not relevant(event):
        return KEEP
    if event.type is EventType.COMPLAINT:
        return Decision(suppress=COMPLAINT, changed=state is not None)
    if event.type is EventType.UNSUBSCRIBE:
        return unsubscribed(event)
    if event.type is EventType.DELIVERY:
        return _delivered(state, day_of(event.ts))
    failure = event_failure(event)
    if event.type is EventType.BOUNCE:
        if failure == "hard":
            return Decision(suppress=HARD_BOUNCE, changed=state is not None)
        return _count(state, event.ts, policy) if failure == "mailbox" else KEEP
    if event.type is EventType.EXPIRATION:
        return KEEP if failure == "policy" else _count(state, event.ts, policy)
    # A deferral: only mailbox trouble says something about the address.
    if policy.count_deferrals and failure == "mailbox":
        return _count(state, event.ts, policy)
    return KEEP


def unsubscribed(event: Event) -> Decision:
    """Suppress in the scope the event names; the soft-failure days stay, since leaving a list
    says nothing about the mailbox. A label that names no scope suppresses nothing (the
    tokens of our services always name one)."""
    try:
        label = Scope.parse(event.scope).label
    except ValueError:
        return KEEP
    return Decision(suppress=UNSUBSCRIBE, scope=label)


def _delivered(state: SoftState | None, day: int) -> Decision:
    # Failures after the delivery's day stay: events of different messages arrive out of order.
    if state is None:
        return KEEP
    later = tuple(d for d in state.days if d > day)
    if later == state.days:
        return KEEP
    return Decision(state=SoftState(later) if later else None, changed=True)


def _count(state: SoftState | None, ts: float, policy: Policy) -> Decision:
    day = day_of(ts)
    days = state.days if state is not None else ()
    newest = max((day, *days))
    if day <= newest - policy.window_days:
        return KEEP  # an old event arriving late: outside the window already
    kept = tuple(sorted({d for d in (*days, day) if d > newest - policy.window_days}))
    if len(kept) >= policy.threshold:
        return Decision(suppress=REPEATED_SOFT, changed=state is not None)
    if state is not None and kept == state.days:
        return KEEP
    return Decision(state=SoftState(kept), changed=True)


def stale(state: SoftState, today: int, policy: Policy) -> bool:
    """True when no counted day is inside the window any more (the entry can go)."""
    return all(d <= today - policy.window_days for d in state.days)
