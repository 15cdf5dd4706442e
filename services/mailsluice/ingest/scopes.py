"""Who a message is sent for and which list it belongs to: the envelope's `tenant` and `list_id`,
the scopes of a suppression (contracts/suppressions.py), and the list scope checked at the end
of DATA.

- Tenant: an AUTH user's `tenant` from the users file (auth.py; the user name when not given);
  for a trusted-network client the configured `trusted_tenant`, else none ("").
- List: the id inside the angle brackets of the message's `List-Id:` field (RFC 2919), when it
  is a valid scope name (letters, digits, `._@+-`, up to 200 characters); else none. A list
  belongs to its tenant: without a tenant there is no list scope.

RCPT knows the tenant and the sender, so the global, tenant and sender-domain scopes are judged
there (550 5.7.1). The list is known only once the message is read; SMTP has one reply for the
whole DATA, so a recipient suppressed for the list is taken out of the queue records instead and
gets a `suppressed` event (emitted without waiting, like the `rejection` events of RCPT), and
the client gets the 250 of the others. A message whose every recipient is suppressed for its
list queues nothing and is still answered 250.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from mailsluice.contracts.events import Event, EventType, suppressed_event
from mailsluice.contracts.suppressions import Scope, ScopeKind
from mailsluice.ingest.auth import User
from mailsluice.ingest.message import field_name, field_value, split_header
from mailsluice.ingest.verdicts import IsSuppressed

if TYPE_CHECKING:  # plan.py reads the list id from here
    from mailsluice.ingest.plan import Plan, QueueRecord

LIST_TEXT = "suppressed for the list at the end of DATA"


def valid_name(name: str) -> bool:
    """Whether `name` may name a tenant or a list in a suppression scope."""
    try:
        Scope.parse(f"tenant:{name}")
    except ValueError:
        return False
    return name == name.strip()


def tenant_of(user: User | None, *, trusted_network: str, trusted_tenant: str) -> str:
    if user is not None:
        return user.tenant or user.name
    return trusted_tenant if trusted_network else ""


def list_id_of(data: bytes) -> str:
    """The list id of the first `List-Id:` field of a message (CRLF line ends), or ""."""
    fields, _ = split_header(data)
    for lines in fields:
        if field_name(lines) == "list-id":
            value = field_value(lines)
            start, end = value.rfind("<"), value.rfind(">")
            found = value[start + 1 : end].strip() if 0 <= start < end else ""
            return found if valid_name(found) else ""
    return ""


def list_scope(tenant: str, list_id: str) -> Scope | None:
    if not (tenant and list_id and valid_name(tenant) and valid_name(list_id)):
        return None
    return Scope(ScopeKind.LIST, tenant=tenant, list_id=list_id)


def screen_list(plan: Plan, is_suppressed: IsSuppressed, *, now: float) -> Plan:
    """The plan without the recipients its list suppresses; a `suppressed` event for each."""
    records: list[QueueRecord] = []
    events: list[Event] = []
    for record in plan.records:
        env = record.envelope
        scope = list_scope(env.tenant, env.list_id)
        gone = [r for r in env.recipients if is_suppressed(r, (scope,))] if scope else []
        if not gone:  # the record as planned (no copy: this runs for every message)
            records.append(record)
            continue
        assert scope is not None
        events += [
            suppressed_event(env, r, scope=scope.label, text=LIST_TEXT, now=now) for r in gone
        ]
        kept = tuple(r for r in env.recipients if r not in gone)
        if kept:
            records.append(replace(record, envelope=env.model_copy(update={"recipients": kept})))
    if not events:
        return plan
    # the reception counts what was queued (campaign stats count the suppressed apart)
    kept_events = tuple(
        e.model_copy(update={"recipients": e.recipients - len(events)})
        if e.type is EventType.RECEPTION
        else e
        for e in plan.outcome.events
    )
    outcome = replace(plan.outcome, events=(*kept_events, *events))
    return replace(plan, outcome=outcome, records=tuple(records))
