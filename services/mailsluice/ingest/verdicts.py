"""Per-recipient verdicts at RCPT time, the sender's at MAIL, and the MX verdict cache that
keeps recipient verdicts cheap.

judge_sender() is a plain function of the reverse-path and the client's owned domains;
judge_recipient() of the address, the transaction so far, the suppression list and an MX lookup:
every verdict is unit-testable without sockets or Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mailsluice.contracts.suppressions import GLOBAL, Scope
from mailsluice.ingest import replies
from mailsluice.mx import MxAnswer
from mailsluice.policy.owners import OwnedDomains
from mailsluice.policy.rollup import Rollup

MxLookup = Callable[[str], Awaitable[MxAnswer]]
# Whether the suppression list holds the address in any of the scopes.
IsSuppressed = Callable[[str, Sequence[Scope]], bool]


@dataclass(frozen=True)
class Verdict:
    reply: str
    reason: str = ""  # "" when accepted, else one of contracts.INGEST_REJECT_REASONS
    routing_key: str = ""

    @property
    def accepted(self) -> bool:
        return not self.reason


def rejected(reply: str, reason: str) -> Verdict:
    return Verdict(reply, reason)


def judge_sender(sender: str, owned: OwnedDomains, who: str) -> Verdict:
    """MAIL FROM: the reverse-path must be in a domain the client owns (RFC 6409 §6.1). The
    null reverse-path passes: bounces and auto-replies must use it (RFC 3834 §3.2) and it
    claims no domain; the header `From:` is still checked at DATA."""
    if not sender or owned.owns_address(sender):
        return Verdict(replies.S250_SENDER_OK)
    return rejected(replies.S550_SENDER_NOT_OWNED.format(user=who), "sender_not_owned")


async def judge_recipient(
    address: str,
    *,
    accepted_so_far: int,
    max_recipients: int,
    is_suppressed: IsSuppressed,
    mx_lookup: MxLookup,
    rollup: Rollup,
    allow_private: bool = False,
    scopes: Sequence[Scope] = (GLOBAL,),
) -> Verdict:
    """The verdict for one syntactically valid recipient address. It is refused when suppressed
    in any of `scopes` (those known at RCPT: global, the tenant's, the sender domain's). A domain
    whose MX hosts all resolve to non-global addresses is refused like an address literal,
    unless `allow_private` (tests and sandboxes on loopback)."""
    if accepted_so_far >= max_recipients:
        return rejected(replies.S452_TOO_MANY_RECIPIENTS, "too_many_recipients")
    if is_suppressed(address, scopes):
        return rejected(replies.S550_SUPPRESSED, "suppressed")
    answer = await mx_lookup(address.rpartition("@")[2])
    if answer.kind == "null_mx":
        return rejected(replies.S556_NULL_MX, "null_mx")
    if answer.kind == "nxdomain":
        return rejected(replies.S550_NO_DOMAIN, "no_domain")
    if answer.kind == "temp_fail":
        return rejected(replies.S450_DNS_TEMPFAIL, "dns_timeout")
    if not allow_private and answer.only_forbidden_addresses():
        return rejected(replies.S550_PRIVATE_DESTINATION, "private_destination")
    hosts = answer.hosts if answer.kind == "mx" else ()
    return Verdict(replies.S250_RCPT_OK, routing_key=rollup.routing_key(address, hosts))


async def unverified_mx(domain: str) -> MxAnswer:
    """The MX lookup used when domain checks are off: every domain is taken as deliverable."""
    return MxAnswer(domain, "implicit", (domain,), detail="not verified")


# How long to keep a verdict when the answer carries no TTL (implicit MX, negative answers)
# or must not be trusted for long (temporary failures: long enough to spare a 1,000-recipient
# message 1,000 timeouts, short enough that the next message retries).
DEFAULT_TTL_S = {"mx": 60.0, "implicit": 60.0, "null_mx": 60.0, "nxdomain": 60.0, "temp_fail": 5.0}
MIN_TTL_S = 5.0


class MxCache:
    """A bounded, TTL-respecting cache in front of an MX lookup; concurrent lookups of one
    domain share a single query."""

    def __init__(
        self,
        lookup: MxLookup,
        *,
        max_entries: int = 10000,
        max_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._max_entries = max_entries
        self._max_ttl = max_ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, MxAnswer]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[MxAnswer]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def ttl_for(self, answer: MxAnswer) -> float:
        if answer.kind == "temp_fail":
            ttl = DEFAULT_TTL_S["temp_fail"]
        elif answer.ttl > 0:
            ttl = max(float(answer.ttl), MIN_TTL_S)
        else:
            ttl = DEFAULT_TTL_S[answer.kind]
        return min(ttl, self._max_ttl)

    async def __call__(self, domain: str) -> MxAnswer:
        domain = domain.rstrip(".").lower()
        hit = self._entries.get(domain)
        if hit is not None:
            if hit[0] > self._clock():
                self._entries.move_to_end(domain)
                return hit[1]
            del self._entries[domain]
        pending = self._inflight.get(domain)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[MxAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[domain] = future
        try:
            answer = await self._lookup(domain)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(domain, None)
        future.set_result(answer)
        self._store(domain, answer)
        return answer

    def _store(self, domain: str, answer: MxAnswer) -> None:
        ttl = self.ttl_for(answer)
        if self._max_entries <= 0 or ttl <= 0:
            return
        self._entries[domain] = (self._clock() + ttl, answer)
        self._entries.move_to_end(domain)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
