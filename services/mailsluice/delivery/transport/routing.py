"""Where a destination's mail goes: static routes, smarthost, or MX lookup (RFC 5321 §5.1).

The Router turns a domain into an ordered list of hops (address + port) or a local failure with
an SMTP code. DNS answers are cached by TTL in a bounded cache with an injected clock; lookups
are injected too, so the logic is tested without a DNS server.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailsluice.delivery.transport.replies import (
    S450_DNS_TEMP,
    S550_MX_NOT_FOUND,
    S550_NXDOMAIN,
    S554_PRIVATE_DESTINATION,
    S556_NULL_MX,
    Reply,
)
from mailsluice.delivery.transport.settings import Endpoint, OutboundSettings
from mailsluice.mx import MxAnswer, is_forbidden_address
from mailsluice.resolver import lookup_mx

# Answers that carry no TTL (NXDOMAIN, null MX, A records via implicit MX) are cached this long;
# real TTLs are clamped so one zone cannot pin an answer for days or bypass the cache entirely.
NEGATIVE_TTL_S = 60.0
MIN_TTL_S = 5.0
MAX_TTL_S = 3600.0


@dataclass(frozen=True)
class Hop:
    """One place to try: the name it was found under (for TLS SNI and logs) and an address."""

    name: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return (
            f"{self.name}[{host}]:{self.port}"
            if self.name != self.address
            else f"{host}:{self.port}"
        )


@dataclass(frozen=True)
class RouteFailure:
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True)
class Route:
    """Hops in the order to try them; `static` when configuration named the destination.
    `mx_hosts` are the MX host names DNS gave (preference order, unshuffled, so the same answer
    always gives the same tuple): the shaper rolls a hosted domain up to its provider by them."""

    hops: tuple[Hop, ...]
    static: bool = False
    mx_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostAnswer:
    """Addresses of a host name; `temp_fail` when DNS could not say."""

    addresses: tuple[str, ...]
    ttl: float = NEGATIVE_TTL_S
    temp_fail: str = ""


MxLookup = Callable[[str], Awaitable[MxAnswer]]
HostLookup = Callable[[str], Awaitable[HostAnswer]]


def failure(reply: Reply, detail: str = "") -> RouteFailure:
    code, enhanced, text = reply
    return RouteFailure(code, enhanced, f"{text} ({detail})" if detail else text)


def static_endpoint(
    domain: str, routes: dict[str, Endpoint], smarthost: Endpoint | None
) -> Endpoint | None:
    """Transport-map lookup: exact domain, then '.parent' entries, then '*', then smarthost."""
    domain = domain.lower().rstrip(".")
    if domain in routes:
        return routes[domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in routes:
            return routes[parent]
    return routes.get("*", smarthost)


@functools.lru_cache(maxsize=1024)  # asked for every message's route host
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TtlCache:
    """A bounded LRU map whose entries expire by the injected clock."""

    def __init__(self, max_size: int, clock: Callable[[], float]) -> None:
        self._max = max_size
        self._clock = clock
        self._data: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if self._clock() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Any, ttl: float) -> None:
        if self._max <= 0 or ttl <= 0:
            return
        self._data[key] = (self._clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def clamp_ttl(ttl: float) -> float:
    return min(max(float(ttl), MIN_TTL_S), MAX_TTL_S)


async def dns_host_lookup(resolver: dns.asyncresolver.Resolver, host: str) -> HostAnswer:
    """A then AAAA records of a host, with the smallest TTL seen."""
    found: list[str] = []
    ttl = MAX_TTL_S
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.Timeout:
            return HostAnswer((), temp_fail="DNS timeout")
        except dns.exception.DNSException as exc:
            return HostAnswer((), temp_fail=type(exc).__name__)
        if answer.rrset is not None:
            ttl = min(ttl, float(answer.rrset.ttl))
        found.extend(str(r.address) for r in answer)
    return HostAnswer(tuple(found), ttl if found else NEGATIVE_TTL_S)


class Router:
    """Resolves a destination domain into a Route or a RouteFailure."""

    def __init__(
        self,
        settings: OutboundSettings,
        mx_lookup: MxLookup,
        host_lookup: HostLookup,
        *,
        clock: Callable[[], float],
        shuffle: Callable[[list[str]], None] = random.shuffle,
    ) -> None:
        self._settings = settings
        self._shuffle = shuffle
        self._routes = settings.routes()
        self._smarthost = settings.smarthost_endpoint()
        self._mx_lookup = mx_lookup
        self._host_lookup = host_lookup
        self._cache = TtlCache(settings.mx_cache_size, clock)

    @classmethod
    def from_resolver(
        cls,
        settings: OutboundSettings,
        resolver: dns.asyncresolver.Resolver,
        *,
        clock: Callable[[], float],
    ) -> Router:
        async def mx(domain: str) -> MxAnswer:
            return await lookup_mx(resolver, domain)

        async def host(name: str) -> HostAnswer:
            return await dns_host_lookup(resolver, name)

        return cls(settings, mx, host, clock=clock)

    @property
    def cache(self) -> TtlCache:
        return self._cache

    async def route(self, domain: str) -> Route | RouteFailure:
        domain = domain.lower().rstrip(".")
        endpoint = static_endpoint(domain, self._routes, self._smarthost)
        if endpoint is not None:
            return await self._static_route(endpoint)
        answer = await self._mx(domain)
        if answer.kind == "null_mx":
            return failure(S556_NULL_MX)
        if answer.kind == "nxdomain":
            return failure(S550_NXDOMAIN, answer.detail)
        if answer.kind == "temp_fail":
            return failure(S450_DNS_TEMP, answer.detail)
        return await self._mx_route(self._preference_order(answer), answer.hosts)

    def _preference_order(self, answer: MxAnswer) -> tuple[str, ...]:
        """Hosts by preference; equal preferences in random order to spread load (RFC 5321
        §5.1)."""
        if len(answer.preferences) != len(answer.hosts):
            return answer.hosts
        ordered: list[str] = []
        for pref in sorted(set(answer.preferences)):
            same = [h for h, p in zip(answer.hosts, answer.preferences, strict=True) if p == pref]
            self._shuffle(same)
            ordered.extend(same)
        return tuple(ordered)

    async def _static_route(self, endpoint: Endpoint) -> Route | RouteFailure:
        # Configuration named this host, so private addresses are allowed here.
        if is_ip_literal(endpoint.host):
            return Route((Hop(endpoint.host, endpoint.host, endpoint.port),), static=True)
        found = await self._host(endpoint.host)
        if found.temp_fail:
            return failure(S450_DNS_TEMP, f"{endpoint.host}: {found.temp_fail}")
        if not found.addresses:
            return failure(S550_MX_NOT_FOUND, f"static route host {endpoint.host}")
        hops = tuple(Hop(endpoint.host, a, endpoint.port) for a in found.addresses)
        return Route(hops[: self._settings.max_hops], static=True)

    async def _mx_route(
        self, hosts: tuple[str, ...], mx_hosts: tuple[str, ...]
    ) -> Route | RouteFailure:
        hops: list[Hop] = []
        temp_fail = ""
        refused = 0
        for host in hosts:
            if is_ip_literal(host):
                addresses: tuple[str, ...] = (host,)  # a (misconfigured) MX naming an address
            else:
                found = await self._host(host)
                temp_fail = temp_fail or (found.temp_fail and f"{host}: {found.temp_fail}")
                addresses = found.addresses
            for address in addresses:
                if is_forbidden_address(address) and not self._settings.allow_private_destinations:
                    refused += 1
                    continue
                hops.append(Hop(host, address, self._settings.port))
            if len(hops) >= self._settings.max_hops:
                break
        if hops:
            return Route(tuple(hops[: self._settings.max_hops]), mx_hosts=mx_hosts)
        if temp_fail:
            return failure(S450_DNS_TEMP, temp_fail)
        if refused:
            return failure(S554_PRIVATE_DESTINATION)
        return failure(S550_MX_NOT_FOUND)

    async def _mx(self, domain: str) -> MxAnswer:
        key = ("mx", domain)
        cached: MxAnswer | None = self._cache.get(key)
        if cached is not None:
            return cached
        answer = await self._mx_lookup(domain)
        if answer.kind == "mx":
            self._cache.put(key, answer, clamp_ttl(answer.ttl))
        elif answer.kind in ("nxdomain", "null_mx", "implicit"):
            ttl = clamp_ttl(answer.ttl) if answer.ttl else NEGATIVE_TTL_S
            self._cache.put(key, answer, ttl)
        # temp_fail is not cached: the next attempt asks again.
        return answer

    async def _host(self, host: str) -> HostAnswer:
        key = ("host", host)
        cached: HostAnswer | None = self._cache.get(key)
        if cached is not None:
            return cached
        found = await self._host_lookup(host)
        if not found.temp_fail:
            self._cache.put(key, found, clamp_ttl(found.ttl))
        return found
