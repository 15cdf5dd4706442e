"""Suppression at send time: just before each attempt of a record (its first, or a retry back
from a delay topic), every recipient is looked up in the suppression list in the scopes the
message falls in (contracts/suppressions.py `scopes_for`: global, its tenant, its sender's
domain, its list). The list is the compacted topic mailsluice.suppressions, which the worker
service follows live with the same SuppressionStore as ingest.

A suppressed recipient is not sent: it gets a `suppressed` event (the matching scope's label as
its reason, never a DSN) and the rest of the message goes on; a record whose every recipient is
suppressed finishes without a send. The events are acknowledged before the attempt goes on, so
the record finishes only once they are written, as with every other outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from mailsluice.contracts.envelope import Envelope
from mailsluice.contracts.events import suppressed_event
from mailsluice.contracts.suppressions import Scope, Suppression, scopes_for
from mailsluice.delivery.shaping.scheduler import Job
from mailsluice.delivery.worker.outcomes import event_record
from mailsluice.metrics.delivery import Delivery as m

if TYPE_CHECKING:
    from mailsluice.delivery.worker.attempts import Attempts, Item

log = logging.getLogger(__name__)


class Lookup(Protocol):
    """What the check needs of the suppression list (suppression.store.SuppressionStore)."""

    def match(self, address: str, scopes: Iterable[Scope]) -> Suppression | None: ...


Hits = list[tuple[str, Suppression]]


def screen_envelope(env: Envelope, lookup: Lookup) -> tuple[Envelope, Hits]:
    """The envelope with the recipients still to send, and each suppressed recipient with the
    entry that holds it (the same envelope when none is)."""
    scopes = scopes_for(tenant=env.tenant, sender=env.sender, list_id=env.list_id)
    kept: list[str] = []
    hits: Hits = []
    for recipient in env.recipients:
        entry = lookup.match(recipient, scopes)
        if entry is None:
            kept.append(recipient)
        else:
            hits.append((recipient, entry))
    if not hits:
        return env, hits
    return env.model_copy(update={"recipients": tuple(kept)}), hits


def scope_kind(label: str) -> str:
    """The kind of a scope label, for the metric (global for anything unreadable)."""
    kind = label.partition(":")[0]
    return kind if kind in m.SCOPE_KINDS else "global"


class Screen:
    """The check `Attempts.deliver` runs first: `await screen(job)` is the envelope to go on
    with, and the job's item holds it from then on. Off (everything goes) without a lookup."""

    def __init__(self, attempts: Attempts, lookup: Lookup | None = None) -> None:
        self.attempts = attempts
        self.lookup = lookup

    async def __call__(self, job: Job[Item]) -> Envelope:
        item = job.item
        if self.lookup is None:
            return item.env
        env, hits = screen_envelope(item.env, self.lookup)
        if not hits:
            return env
        attempts = self.attempts
        now = attempts.wall()
        events = [
            suppressed_event(
                item.env, r, scope=entry.scope, text=f"suppressed: {entry.reason}", now=now
            )
            for r, entry in hits
        ]
        try:
            await attempts.produce_all([event_record(e) for e in events])
        except BaseException:
            # as deliver does when a send is cancelled: handed back, the slot freed
            attempts.release(item)
            attempts.scheduler.done(job, attempts.mono())
            attempts.wake()
            raise
        for _recipient, entry in hits:
            m.SUPPRESSED.labels(attempts.pool, scope_kind(entry.scope)).inc()
        log.info(
            "%d of %d recipients suppressed, not sent",
            len(hits),
            len(item.env.recipients),
            extra={"queue_id": env.queue_id, "pool": attempts.pool},
        )
        item.env = env
        return env
