"""DNS for ingest and delivery: an async resolver from settings, and MX lookups answered as
mx.MxAnswer (the I/O side; the answer itself is plain data in mx.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from mailsluice.config import MailsluiceSettings
from mailsluice.metrics.labels import Stopwatch
from mailsluice.metrics.resolver import DNS_FAILURES_TOTAL, DNS_SECONDS
from mailsluice.mx import MxAnswer


class DnsSettings(MailsluiceSettings):
    """DNS resolution used for recipient checks at ingest and MX routing at delivery."""

    model_config = SettingsConfigDict(env_prefix="MAILSLUICE_DNS_", extra="ignore", frozen=True)

    nameservers: str = Field(
        "", description="Comma-separated host[:port] resolvers; empty uses /etc/resolv.conf."
    )
    timeout_s: float = Field(5.0, gt=0, le=60, description="Total time for one DNS lookup.")

    @field_validator("nameservers")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        for host, port in parse_nameservers(value):
            ipaddress.ip_address(host)  # raises ValueError with the bad address
            if not 0 < port < 65536:
                raise ValueError(f"bad port {port}")
        return value


def parse_nameservers(value: str) -> list[tuple[str, int]]:
    servers = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or (":" in host and not host.startswith("[")):
            # bare IPv4 or bare IPv6 address: default port
            servers.append((item.strip("[]"), 53))
        else:
            servers.append((host.strip("[]"), int(port)))
    return servers


def make_resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    servers = parse_nameservers(settings.nameservers)
    resolver = dns.asyncresolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [host for host, _ in servers]
        resolver.nameserver_ports = {host: port for host, port in servers}
    resolver.lifetime = settings.timeout_s
    resolver.timeout = min(settings.timeout_s, 2.0)
    return resolver


async def lookup_mx(resolver: dns.asyncresolver.Resolver, domain: str) -> MxAnswer:
    domain = domain.rstrip(".").lower()
    try:
        with Stopwatch(DNS_SECONDS.labels("MX")):
            answer = await resolver.resolve(domain, dns.rdatatype.MX, search=False)
    except dns.resolver.NXDOMAIN:
        DNS_FAILURES_TOTAL.labels("MX", "nxdomain").inc()
        return MxAnswer(domain, "nxdomain", detail="domain does not exist")
    except dns.resolver.NoAnswer:
        DNS_FAILURES_TOTAL.labels("MX", "no_answer").inc()
        return await _implicit_mx(resolver, domain)
    except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
        DNS_FAILURES_TOTAL.labels("MX", "timeout").inc()
        return MxAnswer(domain, "temp_fail", detail="DNS timeout")
    except dns.resolver.NoNameservers as exc:
        DNS_FAILURES_TOTAL.labels("MX", "servfail").inc()
        return MxAnswer(domain, "temp_fail", detail=type(exc).__name__)
    except dns.exception.DNSException as exc:
        DNS_FAILURES_TOTAL.labels("MX", "error").inc()
        return MxAnswer(domain, "temp_fail", detail=type(exc).__name__)
    records = sorted(answer, key=lambda r: (r.preference, str(r.exchange)))
    ttl = answer.rrset.ttl if answer.rrset is not None else 0
    if len(records) == 1 and records[0].exchange == dns.name.root:
        return MxAnswer(domain, "null_mx", ttl=ttl, detail="null MX (RFC 7505)")
    # A null MX mixed with real MX records is malformed; the real ones are usable.
    usable = [r for r in records if r.exchange != dns.name.root]
    hosts = tuple(r.exchange.to_text(omit_final_dot=True).lower() for r in usable)
    prefs = tuple(int(r.preference) for r in usable)
    return MxAnswer(domain, "mx", hosts, ttl, preferences=prefs)


async def _implicit_mx(resolver: dns.asyncresolver.Resolver, domain: str) -> MxAnswer:
    addresses = await resolve_addresses(resolver, domain)
    if isinstance(addresses, str):
        return MxAnswer(domain, "temp_fail", detail=addresses)
    if not addresses:
        # Exists but has neither MX nor address: no way to deliver (RFC 5321 §5.1).
        return MxAnswer(domain, "nxdomain", detail="domain has no MX and no address")
    return MxAnswer(domain, "implicit", (domain,), detail="implicit MX", addresses=tuple(addresses))


# More MX hosts than this are not resolved at RCPT: the answer stays unknown (and accepted).
MAX_HOSTS_RESOLVED = 10


async def lookup_mx_addresses(resolver: dns.asyncresolver.Resolver, domain: str) -> MxAnswer:
    """An MX lookup with the hosts' addresses (MxAnswer.addresses), so ingest can tell at RCPT
    a domain whose mail servers all sit on private, loopback or other non-global addresses."""
    answer = await lookup_mx(resolver, domain)
    if answer.kind != "mx" or len(answer.hosts) > MAX_HOSTS_RESOLVED:
        return answer
    found = await asyncio.gather(*(_host_addresses(resolver, h) for h in answer.hosts))
    if any(isinstance(item, str) for item in found):
        return answer  # a temporary failure: not known in full
    return dataclasses.replace(answer, addresses=tuple(a for item in found for a in item))


async def _host_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str] | str:
    try:
        return [str(ipaddress.ip_address(host))]  # an MX naming an address (misconfigured)
    except ValueError:
        return await resolve_addresses(resolver, host)


async def resolve_addresses(resolver: dns.asyncresolver.Resolver, host: str) -> list[str] | str:
    """A and AAAA addresses of a host, or a string naming a temporary failure."""
    found: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            return "DNS timeout"
        except dns.exception.DNSException as exc:
            return type(exc).__name__
        found.extend(r.address for r in answer)
    return found
