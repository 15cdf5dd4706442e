"""POST /v1/messages from a validated request to its answer: the tenant's checks, rendering and
composition per recipient, suppressions, the quota, one publish with acks, the 202.

Every recipient gets its own result, in request order: accepted (queued), suppressed (a
scope the message falls in holds the address: a `suppressed` event), rejected (its rendering
failed or its message is too big: a `rejection` event). Each has a queue id, so its events can
be followed. Records and events go to Kafka in one publish and the answer waits for every
acknowledgement (like SMTP's 250); the quota is asked before and charged after.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailsluice.api.compose import Letter, Part, compose, envelope, queue_record, record_size
from mailsluice.api.models import Recipient, RecipientResult, SendAnswer, SendRequest
from mailsluice.api.problems import Problem, invalid
from mailsluice.api.render import Compiled, Renderer, RenderFailed, TemplateInvalid
from mailsluice.contracts.engagement import Grader
from mailsluice.contracts.envelope import Envelope, new_queue_id
from mailsluice.contracts.events import Event, EventType, encode_event, message_fields
from mailsluice.contracts.events import suppressed_event as make_suppressed_event
from mailsluice.contracts.limits import record_limit
from mailsluice.contracts.suppressions import Scope, Suppression
from mailsluice.contracts.templates import StoredTemplate
from mailsluice.contracts.topics import EVENTS_TOPIC
from mailsluice.kafka.producers import Send
from mailsluice.policy.rollup import Rollup
from mailsluice.tenancy.model import Tenant
from mailsluice.tenancy.quota import QuotaBook

# Recipients rendered between two yields to the event loop (a few milliseconds of work).
YIELD_EVERY = 20

Publish = Callable[[Sequence[Send]], Awaitable[None]]  # raises when Kafka did not ack in time
Match = Callable[[str, Sequence[Scope]], Suppression | None]


class TemplateLookup(Protocol):
    def get(self, tenant: str, template_id: str, version: int | None) -> StoredTemplate | None: ...


@dataclass(frozen=True)
class SendLimits:
    max_message_size: int
    max_attachment_bytes: int
    max_data_bytes: int


class Unavailable(Exception):
    """Kafka did not acknowledge the request's records in time (503)."""


@dataclass
class Batch:
    """What one request writes and answers, built recipient by recipient."""

    results: list[RecipientResult] = field(default_factory=list)
    records: list[Send] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for r in self.results if r.status == "accepted")

    def sends(self) -> list[Send]:
        events: list[Send] = [
            (EVENTS_TOPIC, encode_event(e), e.queue_id.encode(), ()) for e in self.events
        ]
        return [*self.records, *events]


class Sender:
    def __init__(
        self,
        *,
        renderer: Renderer,
        rollup: Rollup,
        match: Match,
        quota: QuotaBook,
        publish: Publish,
        limits: SendLimits,
        templates: TemplateLookup | None = None,
        clock: Callable[[], float] = time.time,
        grade: Grader | None = None,
    ) -> None:
        self.renderer = renderer
        self.rollup = rollup
        self.match = match
        self.quota = quota
        self.publish = publish
        self.limits = limits
        self.templates = templates
        self.clock = clock
        self.grade = grade  # the recipients' engagement grade (mailsluice/engagement/store.py)
        self._rendering = asyncio.Lock()
        self._reserved: dict[str, int] = {}  # recipients admitted, not yet acknowledged

    async def send(self, tenant: Tenant, request: SendRequest, request_key: str) -> SendAnswer:
        """Raises Problem (403, 422, 429) or Unavailable; otherwise every record is in Kafka."""
        letter = self.letter(tenant, request, request_key)
        compiled = self.compile(tenant, request)
        batch = Batch()
        # One request renders at a time: the work is all CPU in this one thread, and requests
        # rendering side by side only finish later each (the producer's batches of each wait
        # behind the others' rendering). A request waiting for its acks lets the next render.
        async with self._rendering:
            now = self.clock()
            for index, recipient in enumerate(request.recipients):
                if index and index % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # the producer's sender gets the loop meanwhile
                self.one(batch, letter, compiled, index=index, recipient=recipient, now=now)
            self.admit(tenant, batch.accepted, now)
        try:
            await self.publish(batch.sends())
        except Exception as exc:
            raise Unavailable(type(exc).__name__ or "unavailable") from exc
        finally:
            self._reserved[tenant.name] -= batch.accepted
        self.quota.charge(tenant.name, batch.accepted, self.clock())
        return SendAnswer(accepted=batch.accepted, results=batch.results)

    def admit(self, tenant: Tenant, count: int, now: float) -> None:
        """Reserve `count` recipients of the tenant's quota, with those of the requests still
        waiting for their acks here (charged once acknowledged); 429 Problem when over."""
        reserved = self._reserved.get(tenant.name, 0)
        over = self.quota.admit(tenant.name, tenant.quotas, reserved + count, now)
        if over is not None:
            raise Problem(
                429,
                "Over quota",
                f"{over.used + reserved} of {over.limit} recipients this {over.window} are "
                f"used; {count} more do not fit.",
                headers={"Retry-After": str(over.retry_after_s)},
                window=over.window,
            )
        self._reserved[tenant.name] = reserved + count

    # --- the request as a whole -----------------------------------------------------------

    def letter(self, tenant: Tenant, request: SendRequest, request_key: str) -> Letter:
        if not tenant.owned.owns_address(request.from_.email):
            raise Problem(
                403,
                "Sender not owned",
                f"{request.from_.email} is not in a domain of tenant {tenant.name}.",
            )
        errors = self.check(tenant, request)
        if errors:
            raise invalid(errors)
        return Letter(
            tenant=tenant.name,
            sender=request.from_,
            pool=request.pool or tenant.default_pool,
            stream=request.stream,
            campaign=request.campaign,
            tags=tuple(request.tags),
            list_id=request.list_id,
            headers=tuple(request.headers.items()),
            attachments=tuple(
                Part(a.filename, a.content_type, a.decoded()) for a in request.attachments
            ),
            request_key=request_key,
            tracking=request.tracking or tenant.tracking or "",
        )

    def check(self, tenant: Tenant, request: SendRequest) -> list[dict[str, str]]:
        """What the tenant and the limits refuse, as {field, message}."""
        errors = []
        if request.pool is not None and request.pool not in tenant.pools:
            errors.append({"field": "pool", "message": f"not a pool of tenant {tenant.name}"})
        size = sum(len(a.decoded()) for a in request.attachments)
        if size > self.limits.max_attachment_bytes:
            errors.append(
                {
                    "field": "attachments",
                    "message": f"{size} bytes; at most {self.limits.max_attachment_bytes}",
                }
            )
        for index, recipient in enumerate(request.recipients):
            data = json.dumps(recipient.data, separators=(",", ":"), default=str)
            if len(data.encode()) > self.limits.max_data_bytes:
                errors.append(
                    {
                        "field": f"recipients[{index}].data",
                        "message": f"over {self.limits.max_data_bytes} bytes as JSON",
                    }
                )
        return errors

    def compile(self, tenant: Tenant, request: SendRequest) -> Compiled:
        subject, text, html = request.subject, request.text, request.html
        if request.template is not None:
            ref = request.template
            stored = (
                self.templates.get(tenant.name, ref.id, ref.version) if self.templates else None
            )
            if stored is None:
                raise invalid([{"field": "template", "message": "no such template or version"}])
            subject, text, html = stored.subject, stored.text, stored.html
        try:
            return self.renderer.compile(subject, text, html)
        except TemplateInvalid as exc:
            field_name = exc.part if request.template is None else "template"
            raise invalid([{"field": field_name, "message": exc.message}]) from None

    # --- one recipient ----------------------------------------------------------------------

    def one(
        self,
        batch: Batch,
        letter: Letter,
        compiled: Compiled,
        *,
        index: int,
        recipient: Recipient,
        now: float,
    ) -> None:
        to = recipient.to
        queue_id = new_queue_id(now)
        routing_key = self.rollup.routing_key(to.email)
        env = envelope(letter, to, index=index, queue_id=queue_id, routing_key=routing_key, now=now)
        if self.grade is not None:
            env = env.model_copy(update={"grade": self.grade(letter.tenant, env.recipients)})
        entry = self.match(to.email, letter.scopes)
        if entry is not None:
            batch.events.append(
                make_suppressed_event(env, to.email, scope=entry.scope, text=entry.reason, now=now)
            )
            batch.results.append(_result(index, to.email, queue_id, "suppressed", entry.scope))
            return
        try:
            rendered = self.renderer.render(compiled, _variables(recipient))
            data = compose(letter, to, rendered, queue_id=queue_id, now=now)
        except RenderFailed as exc:
            self.reject(batch, env, index, f"render: {exc}", now)
            return
        record = queue_record(env, data)
        if len(data) > self.limits.max_message_size or record_size(record) > record_limit(
            self.limits.max_message_size
        ):
            self.reject(batch, env, index, "message too big", now)
            return
        batch.records.append(record)
        batch.events.append(_reception(env, to.email, len(data), now))
        batch.results.append(_result(index, to.email, queue_id, "accepted", ""))

    @staticmethod
    def reject(batch: Batch, env: Envelope, index: int, reason: str, now: float) -> None:
        recipient = env.recipients[0]
        batch.events.append(
            Event(
                type=EventType.REJECTION,
                ts=now,
                recipient=recipient,
                code=550,
                text=reason[:1000],
                reason="api_rejected",
                **message_fields(env),
            )
        )
        batch.results.append(_result(index, recipient, env.queue_id, "rejected", reason))


def _variables(recipient: Recipient) -> dict[str, Any]:
    """The data, and `recipient` (email, name) unless the data has its own."""
    to = recipient.to
    return {"recipient": {"email": to.email, "name": to.name}, **recipient.data}


def _result(index: int, to: str, queue_id: str, status: Any, reason: str) -> RecipientResult:
    return RecipientResult(index=index, to=to, id=queue_id, status=status, reason=reason)


def _reception(env: Envelope, recipient: str, size: int, now: float) -> Event:
    return Event(
        type=EventType.RECEPTION,
        ts=now,
        recipient=recipient,
        code=250,
        size=size,
        **message_fields(env),
    )
