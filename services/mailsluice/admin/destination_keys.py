"""Which names `mailsluice destinations suspend|resume|retry-now` accepts as a destination.

A destination is a routing key (contracts/routing.py): a provider of the shaping policy
("google"), one of its shards when it has several ("google#3"), or any other domain, which is
its own destination ("example.com": mail to a domain no provider claims travels under that
domain). So a plain domain is valid whether or not the policy names it. Refused: a name that is
neither ("gmail"), a domain a provider claims ("gmail.com" travels under "google": a command for
it would hold nothing), and a shard the provider does not have. The refusal suggests the nearest
key (difflib), counting a provider's domains and their first labels as names of the provider, so
"gmail" and "gmial" both point to "google".
"""

from __future__ import annotations

import difflib
import re

from mailsluice.contracts.routing import split_key
from mailsluice.policy.rollup import Rollup
from mailsluice.policy.shaping import Policy

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


class Destinations:
    """The destinations a policy and a provider rollup know, and the aliases that lead to them."""

    def __init__(self, policy: Policy, rollup: Rollup, pool: str) -> None:
        model = policy.model
        section = model.pool.get(pool)
        self.policy = policy
        self.providers = sorted(set(model.provider) | {p.name for p in rollup.providers})
        domains = set(model.domain) | (set(section.domain) if section else set())
        self.domains = sorted(domains)
        # a provider's consumer domains: from the rollup (ingest's routing) and the policy
        self.claimed: dict[str, str] = {d: p.name for p in rollup.providers for d in p.domains}
        for name, rule in model.provider.items():
            for domain in rule.domains:
                self.claimed.setdefault(domain, name)
        self.aliases: dict[str, str] = {name: name for name in self.providers}
        self.aliases.update({d: d for d in self.domains})
        for domain, provider in self.claimed.items():
            self.aliases.setdefault(domain, provider)
            self.aliases.setdefault(domain.split(".", 1)[0], provider)

    def refusal(self, key: str, known: frozenset[str] = frozenset()) -> str | None:
        """Why `key` is not a destination (None: it is). `known` are keys accepted whatever
        the policy says (those with a command on the control topic, to undo an old one)."""
        if key in known:
            return None
        base, shard = split_key(key)
        if base in self.providers:
            shards = self.policy.resolve(base).shards
            if shard is None or shard < shards:
                return None
            if shards == 1:
                return f"{base} has no shards; did you mean {base!r}?"
            return f"{base} has {shards} shards: {base}#0 to {base}#{shards - 1}"
        if shard is None and base in self.claimed:
            provider = self.claimed[base]
            return f"mail to {base} travels under provider {provider!r}; did you mean {provider!r}?"
        if shard is None and _DOMAIN.match(base):
            return None
        return f"unknown destination {key!r}{self._suggestion(base)}\n{self.listing()}"

    def _suggestion(self, name: str) -> str:
        # a name of a provider's domain ("gmail") means that provider alone
        found = [name] if name in self.aliases else []
        found = found or difflib.get_close_matches(name, list(self.aliases), n=3, cutoff=0.6)
        keys = list(dict.fromkeys(self.aliases[a] for a in found))
        if not keys:
            return ""
        return "; did you mean " + " or ".join(repr(k) for k in keys) + "?"

    def listing(self) -> str:
        lines = ["known destinations:", "  providers: " + ", ".join(self.providers)]
        if self.domains:
            lines.append("  configured domains: " + ", ".join(self.domains))
        lines.append("  and any other domain name (e.g. example.com): its own destination")
        return "\n".join(lines)
