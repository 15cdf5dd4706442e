"""Provider rollup: which routing key a recipient's mail travels under.

The routing key is the Kafka record key of a queue record, so one partition (one worker) owns a
destination and its rate limit. Known consumer providers roll up many domains into one key
(gmail.com and googlemail.com are both "google"); a domain hosted by a provider (found through its
MX hosts) joins that provider; anything else is its own lower-cased domain. A provider with
`shards` > 1 splits into "<name>#<n>" by a stable hash of the recipient.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from mailsluice.contracts.routing import shard_key

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
MAX_SHARDS = 1024


@dataclass(frozen=True)
class Provider:
    name: str
    domains: tuple[str, ...]
    mx_suffixes: tuple[str, ...] = ()
    shards: int = 1


class Rollup:
    """Immutable after construction; shared by every connection."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers = tuple(providers)
        self._by_domain = {d: p for p in self.providers for d in p.domains}

    def provider_for(self, domain: str, mx_hosts: Iterable[str] = ()) -> Provider | None:
        """The provider of a recipient domain: by the domain itself, else by its MX hosts."""
        found = self._by_domain.get(domain.rstrip(".").lower())
        if found is not None:
            return found
        for raw in mx_hosts:
            host = raw.rstrip(".").lower()
            for provider in self.providers:
                if any(host == s or host.endswith("." + s) for s in provider.mx_suffixes):
                    return provider
        return None

    def routing_key(self, recipient: str, mx_hosts: Iterable[str] = ()) -> str:
        """The routing key of one recipient address (local@domain)."""
        domain = recipient.rpartition("@")[2].rstrip(".").lower()
        provider = self.provider_for(domain, mx_hosts)
        if provider is None:
            return domain
        if provider.shards <= 1:
            return provider.name
        return shard_key(provider.name, shard_of(recipient, provider.shards))


def shard_of(recipient: str, shards: int) -> int:
    """A stable shard number for a recipient (same on every process and restart)."""
    digest = hashlib.blake2b(recipient.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


class RollupError(ValueError):
    """The rollup data is invalid; the message names the provider and field."""


def parse_rollup(data: Mapping[str, Any]) -> Rollup:
    """Validate the TOML structure {providers: {name: {domains, mx_suffixes, shards}}}."""
    providers_raw = data.get("providers")
    if not isinstance(providers_raw, Mapping):
        raise RollupError("missing [providers] table")
    providers: list[Provider] = []
    seen: dict[str, str] = {}
    for name, spec in providers_raw.items():
        if not _NAME.match(name):
            raise RollupError(f"provider name {name!r} is not a valid routing key")
        if not isinstance(spec, Mapping):
            raise RollupError(f"provider {name}: expected a table")
        unknown = set(spec) - {"domains", "mx_suffixes", "shards"}
        if unknown:
            raise RollupError(f"provider {name}: unknown keys {sorted(unknown)}")
        domains = _domain_list(name, "domains", spec.get("domains", []))
        suffixes = _domain_list(name, "mx_suffixes", spec.get("mx_suffixes", []))
        shards = spec.get("shards", 1)
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise RollupError(f"provider {name}: shards must be an integer 1..{MAX_SHARDS}")
        for domain in domains:
            if domain in seen:
                raise RollupError(f"domain {domain} listed by both {seen[domain]} and {name}")
            seen[domain] = name
        providers.append(Provider(name, domains, suffixes, shards))
    return Rollup(providers)


def _domain_list(provider: str, field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RollupError(f"provider {provider}: {field} must be a list")
    out = []
    for item in value:
        if not isinstance(item, str) or not _DOMAIN.match(item.lower()):
            raise RollupError(f"provider {provider}: {field} has an invalid domain {item!r}")
        out.append(item.lower())
    return tuple(out)


def load_rollup(path: str | None = None) -> Rollup:
    """The rollup from a TOML file, or the packaged providers.toml."""
    if path:
        with open(path, "rb") as fh:
            return parse_rollup(tomllib.load(fh))
    return default_rollup()


@lru_cache(maxsize=1)
def default_rollup() -> Rollup:
    text = resources.files("mailsluice.policy").joinpath("providers.toml").read_text()
    return parse_rollup(tomllib.loads(text))
