"""What a delivery attempt's per-recipient results turn into: events, a retry record, a bounce.

Pure functions: they return the records to produce; the worker produces them and only after
Kafka acknowledged all of them does the queue record count as finished (so a crash in between
repeats the attempt instead of losing a recipient).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mailsluice.contracts.envelope import ENVELOPE_HEADER, Envelope, encode_envelope, new_queue_id
from mailsluice.contracts.events import Event, EventType, encode_event, message_fields
from mailsluice.contracts.topics import EVENTS_TOPIC, queue_topic
from mailsluice.delivery.shaping.signals import ResultView
from mailsluice.delivery.transport.replies import S451_NO_RESULT
from mailsluice.delivery.worker import retry_schedule as retry
from mailsluice.delivery.worker.settings import DeliverySettings

# RFC 3463 X.4.7: delivery time expired.
EXPIRED_ENHANCED = "4.4.7"
THROTTLED_ERROR = "throttled: destination over its limits"


class ResultLike(ResultView, Protocol):
    """The shape of transport.RecipientResult that outcomes need: what shaping reads of it,
    and who answered and what it means for the recipient."""

    @property
    def remote(self) -> str: ...
    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]: ...


class DsnBuilder(Protocol):
    def __call__(
        self,
        env: Envelope,
        message: bytes,
        failures: list[Any],
        *,
        reporting_mta: str,
        now: float,
    ) -> bytes: ...


@dataclass(frozen=True)
class Produce:
    """One record to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Plan:
    produces: list[Produce] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    bounced: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # wait for the destination's capacity
    retry_tier: str | None = None
    dsn: bool = False


@dataclass(frozen=True)
class LocalResult:
    """A result made up locally (no remote answer): a transient failure by default."""

    recipient: str
    code: int = S451_NO_RESULT.code
    enhanced: str = S451_NO_RESULT.enhanced
    text: str = S451_NO_RESULT.text
    remote: str = ""
    phase: str = ""  # no remote said it
    source: str = ""
    sent_on_connection: int = 0

    @property
    def kind(self) -> Literal["delivered", "transient", "permanent"]:
        if 200 <= self.code < 300:
            return "delivered"
        return "permanent" if self.code >= 500 else "transient"


def event_record(event: Event) -> Produce:
    return Produce(EVENTS_TOPIC, event.queue_id.encode(), encode_event(event))


def _event(
    kind: EventType, env: Envelope, res: ResultLike, now: float, size: int, *, reason: str = ""
) -> Produce:
    return event_record(
        Event(
            type=kind,
            ts=now,
            recipient=res.recipient,
            code=res.code,
            enhanced=res.enhanced,
            text=res.text[:1000],
            reason=reason,
            attempt=env.attempt + 1,
            remote=res.remote,
            size=size,
            **message_fields(env),
        )
    )


def _expired_result(res: ResultLike, attempts: int) -> Any:
    """The result a DSN reports for an expired recipient: the last error, marked as expired."""
    text = f"delivery time expired after {attempts} attempts; last error: {res.code} {res.text}"
    if dataclasses.is_dataclass(res) and not isinstance(res, type):
        return dataclasses.replace(res, enhanced=EXPIRED_ENHANCED, text=text)
    return LocalResult(res.recipient, res.code, EXPIRED_ENHANCED, text, res.remote)


def as_permanent(res: ResultLike) -> LocalResult:
    """A transient result turned into a bounce by a policy rule: 4xx -> 5xx, 4.x.x -> 5.x.x,
    the remote's text kept."""
    code = res.code + 100 if 400 <= res.code < 500 else 550
    enhanced = "5" + res.enhanced[1:] if res.enhanced[:1] == "4" else "5.0.0"
    return LocalResult(
        res.recipient, code, enhanced, f"{res.text} (bounced by policy rule)", res.remote
    )


def plan_outcome(
    env: Envelope,
    message: bytes,
    results: list[ResultLike],
    *,
    now: float,
    settings: DeliverySettings,
    build_dsn: DsnBuilder | None,
    rng: random.Random | None = None,
    held: Collection[str] = frozenset(),
    held_until: float = 0.0,
) -> Plan:
    """Turn one attempt's results into events, at most one retry record and at most one DSN.
    Transient recipients in `held` were deferred for the destination's own limits: they go to
    a delay topic due at `held_until`, their attempt not counted, instead of the failure
    schedule."""
    plan = Plan()
    size = len(message)
    by_rcpt = {r.recipient: r for r in results}
    ordered: list[ResultLike] = [by_rcpt.get(r) or LocalResult(r) for r in env.recipients]
    transient: list[ResultLike] = []
    failures: list[Any] = []
    for res in ordered:
        if res.kind == "delivered":
            plan.delivered.append(res.recipient)
            plan.produces.append(_event(EventType.DELIVERY, env, res, now, size))
        elif res.kind == "permanent":
            plan.bounced.append(res.recipient)
            plan.produces.append(_event(EventType.BOUNCE, env, res, now, size, reason="bounce"))
            failures.append(res)
        elif res.recipient in held:
            plan.held.append(res.recipient)
        else:
            transient.append(res)
    if plan.held:
        first = by_rcpt[plan.held[0]]
        waiting = env.model_copy(update={"recipients": tuple(plan.held)})
        reason = f"{first.code} {first.enhanced} {first.text}".strip()
        plan.produces.append(
            plan_throttled(waiting, message, now=now, not_before=held_until, reason=reason)
        )
    if transient:
        failures += _plan_transient(
            plan, env, message, transient, now=now, settings=settings, rng=rng
        )
    if failures and build_dsn is not None:
        dsn = bounce_record(env, message, failures, now=now, settings=settings, build=build_dsn)
        if dsn is not None:
            plan.produces.append(dsn)
            plan.dsn = True
    return plan


def _plan_transient(
    plan: Plan,
    env: Envelope,
    message: bytes,
    transient: list[ResultLike],
    *,
    now: float,
    settings: DeliverySettings,
    rng: random.Random | None,
) -> list[Any]:
    """Transient failures: one retry record for all of them, or, when the next try would come
    after the message's expiry, expirations. Returns the failures a DSN reports."""
    size = len(message)
    attempts = env.attempt + 1
    delay = retry.backoff(
        attempts,
        base=settings.retry_base_s,
        factor=settings.retry_factor,
        cap=settings.retry_max_s,
        jitter=settings.retry_jitter,
        rng=rng,
    )
    if now + delay > env.received_at + settings.expiry_s:
        for res in transient:
            plan.expired.append(res.recipient)
            expired = _event(EventType.EXPIRATION, env, res, now, size, reason="expired")
            plan.produces.append(expired)
        return [_expired_result(res, attempts) for res in transient]
    for res in transient:
        plan.deferred.append(res.recipient)
        plan.produces.append(
            _event(EventType.TRANSIENT_FAILURE, env, res, now, size, reason="deferred")
        )
    first = transient[0]
    renv = retry.retry_envelope(
        env,
        (r.recipient for r in transient),
        not_before=now + delay,
        last_error=f"{first.code} {first.enhanced} {first.text}".strip(),
    )
    # A failure retry, even of a message a hold deferred before: `resume` leaves it on schedule.
    renv = renv.model_copy(update={"held": ""})
    plan.retry_tier = retry.choose_tier(delay)
    plan.produces.append(Produce(*_record(renv, message, plan.retry_tier)))
    return []


def _record(
    env: Envelope, message: bytes, tier: str
) -> tuple[str, bytes, bytes, tuple[tuple[str, bytes], ...]]:
    topic, key, value, headers = retry.retry_record(env, message, tier)
    return topic, key, value, tuple(headers)


def bounce_record(
    env: Envelope,
    message: bytes,
    failures: list[Any],
    *,
    now: float,
    settings: DeliverySettings,
    build: DsnBuilder,
) -> Produce | None:
    """A DSN to the envelope sender, queued as a new message from the null sender; None when
    bounces are off or the failed message itself had a null sender (RFC 5321 §4.5.5: no
    bounce of a bounce)."""
    if not settings.bounces_enabled or not env.sender or not failures:
        return None
    body = build(env, message, failures, reporting_mta=settings.reporting_mta, now=now)
    domain = env.sender.rpartition("@")[2].lower()
    dsn_env = Envelope(
        queue_id=new_queue_id(now),
        pool=env.pool,
        stream="transactional",
        sender="",
        recipients=(env.sender,),
        routing_key=domain,
        received_at=now,
    )
    return Produce(
        queue_topic(env.pool),
        domain.encode(),
        body,
        ((ENVELOPE_HEADER, encode_envelope(dsn_env)),),
    )


def throttled_delay(wait: float, horizon: float) -> float:
    """How long a message the scheduler deferred for `wait` seconds stays in a delay topic: it
    comes back half a `horizon` early and waits in memory for its slot, since arriving after
    it (fetch and mover latency) would be lost rate."""
    return max(0.0, wait - horizon / 2)


def throttled_due(now: float, wait: float, horizon: float, expires_at: float) -> float | None:
    """When a message deferred for `wait` seconds is due back from its delay topic (epoch
    seconds); None when it has expired already. A wait past its expiry is cut to the expiry: a
    destination suspended for longer expires its mail on the mail's own date, not at once."""
    if now >= expires_at:
        return None
    return min(now + throttled_delay(wait, horizon), expires_at)


def plan_throttled(
    env: Envelope,
    message: bytes,
    *,
    now: float,
    not_before: float,
    held: str = "throttled",
    reason: str = "",
) -> Produce:
    """A message that would wait too long for a held destination goes to a delay topic; it was
    not tried, so its attempt count stays. Its envelope says which hold (`held`, which
    `destinations resume` releases) and why (`reason`; for a throttle without one, the
    generic THROTTLED_ERROR). A reply from an earlier attempt is not carried over: it is not
    why the message waits now."""
    held = held or "throttled"  # a deferral is a shaping hold, never a failure retry
    renv = retry.retry_envelope(
        env,
        env.recipients,
        not_before=not_before,
        last_error=reason or (THROTTLED_ERROR if held == "throttled" else ""),
        count_attempt=False,
    )
    renv = renv.model_copy(update={"held": held})
    return Produce(*_record(renv, message, retry.choose_tier(not_before - now)))


def overflow_record(env: Envelope, message: bytes, pool: str) -> Produce:
    """The record that moves a message to another pool's queue: the same message, its envelope
    now naming that pool (so its retries and events belong there too)."""
    moved = env.model_copy(update={"pool": pool})
    return Produce(
        queue_topic(pool),
        env.routing_key.encode(),
        message,
        ((ENVELOPE_HEADER, encode_envelope(moved)),),
    )
