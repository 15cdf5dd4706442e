"""Shaping policy: what each destination may receive, as validated data.

A policy file (TOML; the shipped one is shaping.toml) has `[defaults]`, `[provider.<name>]`
rules (a provider also lists the MX host suffixes that roll hosted domains up into it),
`[domain."<domain>"]` rules, and `[pool.<pool>]` sections with per-pool overrides of each level
and the pool's warm-up. A destination's effective rule merges, later winning:

    defaults < pool.defaults < provider < pool.provider < domain < pool.domain

so the more specific target wins, and within one target the pool wins. Overrides from
configuration (later the SendingPool resource) enter as a pool section (`with_pool`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from mailsluice.contracts.routing import base_of
from mailsluice.policy.tomlpos import Path, key_lines, line_of
from mailsluice.policy.units import RateSpec, parse_rate
from mailsluice.policy.warmup_config import WarmupConfig

M = TypeVar("M", bound=BaseModel)

TlsMode = Literal["required", "opportunistic", "disabled"]
MAX_SHARDS = 1024

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_HOST = re.compile(
    r"^\.?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
_REQUIRED = (
    "connection_limit",
    "max_message_rate",
    "max_deliveries_per_connection",
    "max_recipients_per_transaction",
    "tls",
)


class Rule(BaseModel):
    """One level of shaping settings; every field is optional except in [defaults]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_limit: int | None = Field(default=None, ge=1, le=10000)
    max_message_rate: str | list[str] | None = None
    max_connection_rate: str | None = None
    max_deliveries_per_connection: int | None = Field(default=None, ge=1, le=1_000_000)
    max_recipients_per_transaction: int | None = Field(default=None, ge=1, le=10000)
    tls: TlsMode | None = None
    shards: int | None = Field(default=None, ge=1, le=MAX_SHARDS)
    # False: the rates and connections are used as configured instead of as ceilings the
    # destination's controller learns under (a relay or smarthost of one's own)
    adaptive: bool | None = None
    # Where an adaptive destination's slow start begins, per source address, when nothing was
    # learned of it yet (a hint: replies still decide); unset, the controller's modest default
    start_rate: str | None = None
    start_connections: int | None = Field(default=None, ge=1, le=10000)

    @field_validator("max_message_rate")
    @classmethod
    def _rates(cls, value: str | list[str] | None) -> str | list[str] | None:
        for item in [value] if isinstance(value, str) else value or []:
            parse_rate(item)
        if isinstance(value, list) and not value:
            raise ValueError("give at least one rate")
        return value

    @field_validator("max_connection_rate")
    @classmethod
    def _conn_rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @field_validator("start_rate")
    @classmethod
    def _start_rate(cls, value: str | None) -> str | None:
        if value is not None and parse_rate(value).burst is not None:
            raise ValueError("a start rate has no burst: slow start sends evenly")
        return value


class ProviderRule(Rule):
    mx_suffixes: list[str] = []
    domains: list[str] = []

    @field_validator("mx_suffixes", "domains")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            norm = host.strip().lower().rstrip(".")
            if not _HOST.match(norm) or "." not in norm.lstrip("."):
                raise ValueError(f"invalid host name {host!r}")
            out.append(norm.lstrip("."))
        return out


class PoolSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: Rule = Rule()
    provider: dict[str, Rule] = {}
    domain: dict[str, Rule] = {}
    warmup: WarmupConfig | None = None


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    defaults: Rule
    provider: dict[str, ProviderRule] = {}
    domain: dict[str, Rule] = {}
    pool: dict[str, PoolSection] = {}


@dataclass(frozen=True)
class Shaping:
    """The effective, complete rule of one destination."""

    connection_limit: int
    message_rates: tuple[RateSpec, ...]
    connection_rate: RateSpec | None
    max_deliveries_per_connection: int
    max_recipients_per_transaction: int
    tls: TlsMode
    shards: int
    provider: str | None
    adaptive: bool = True
    start_rate: RateSpec | None = None
    start_connections: int | None = None

    def burst_of(self, rate: RateSpec) -> int:
        """A stated burst, else one message per connection, never more than the rate's count."""
        if rate.burst is not None:
            return rate.burst
        return max(1, min(self.connection_limit, int(rate.count)))


@dataclass(frozen=True)
class PolicyError:
    line: int
    key: str
    message: str

    def format(self, filename: str) -> str:
        return f"{filename}:{self.line}: {self.key or '(file)'}: {self.message}"


class PolicyInvalid(ValueError):
    def __init__(self, errors: list[PolicyError]) -> None:
        super().__init__("; ".join(e.format("policy") for e in errors))
        self.errors = errors


class Policy:
    """A validated policy; immutable, shared by every destination of a worker."""

    def __init__(self, model: PolicyFile) -> None:
        self.model = model
        self._by_domain = {d: n for n, p in model.provider.items() for d in p.domains}
        self._suffixes = sorted(
            ((s, n) for n, p in model.provider.items() for s in p.mx_suffixes),
            key=lambda item: -len(item[0]),  # the longest (most specific) suffix first
        )
        self._cache: dict[tuple[str, str, tuple[str, ...]], Shaping] = {}

    def with_pool(self, pool: str, section: PoolSection) -> Policy:
        """This policy with a pool's overrides (from configuration) replacing the file's."""
        pools = dict(self.model.pool)
        pools[pool] = section
        return Policy(self.model.model_copy(update={"pool": pools}))

    def provider_for(self, key: str, mx_hosts: Iterable[str] = ()) -> str | None:
        """The provider of a routing key: a provider name itself ("google#3" too), a domain
        the provider lists, or a domain whose MX hosts end in one of its MX suffixes."""
        base = base_of(key).rstrip(".").lower()
        if base in self.model.provider:
            return base
        if base in self._by_domain:
            return self._by_domain[base]
        for raw in mx_hosts:
            host = raw.rstrip(".").lower()
            for suffix, name in self._suffixes:
                if host == suffix or host.endswith("." + suffix):
                    return name
        return None

    def resolve(self, key: str, pool: str = "", mx_hosts: Iterable[str] = ()) -> Shaping:
        """The effective rule for a routing key in a pool."""
        mx = tuple(mx_hosts)
        cache_key = (key, pool, mx)
        found = self._cache.get(cache_key)
        if found is None:
            found = self._cache[cache_key] = self._resolve(key, pool, mx)
        return found

    def _resolve(self, key: str, pool: str, mx: tuple[str, ...]) -> Shaping:
        provider = self.provider_for(key, mx)
        domain = key.rstrip(".").lower()
        section = self.model.pool.get(pool, PoolSection())
        layers: list[Rule | None] = [self.model.defaults, section.defaults]
        if provider is not None:
            layers += [self.model.provider.get(provider), section.provider.get(provider)]
        layers += [self.model.domain.get(domain), section.domain.get(domain)]
        merged: dict[str, Any] = {}
        for layer in layers:
            if layer is not None:
                merged.update(layer.model_dump(include=set(Rule.model_fields), exclude_none=True))
        raw_rates = merged["max_message_rate"]
        rates = [raw_rates] if isinstance(raw_rates, str) else raw_rates
        conn = merged.get("max_connection_rate")
        return Shaping(
            connection_limit=merged["connection_limit"],
            message_rates=tuple(parse_rate(r) for r in rates),
            connection_rate=parse_rate(conn) if conn else None,
            max_deliveries_per_connection=merged["max_deliveries_per_connection"],
            max_recipients_per_transaction=merged["max_recipients_per_transaction"],
            tls=merged["tls"],
            shards=merged.get("shards", 1),
            provider=provider,
            adaptive=merged.get("adaptive", True),
            start_rate=parse_rate(merged["start_rate"]) if merged.get("start_rate") else None,
            start_connections=merged.get("start_connections"),
        )

    def shards(self, key: str) -> int:
        return self.resolve(key).shards

    def warmup(self, pool: str) -> WarmupConfig | None:
        section = self.model.pool.get(pool)
        return section.warmup if section else None


def parse_toml_model(
    text: str, model_type: type[M]
) -> tuple[M | None, dict[Path, int], list[PolicyError]]:
    """Parse TOML into a model: the model, the line of every key, and errors with lines."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, {}, [toml_error(exc)]
    lines = key_lines(text)
    try:
        return model_type.model_validate(data), lines, []
    except ValidationError as exc:
        return None, lines, pydantic_errors(exc, lines)


def validate_text(text: str) -> tuple[Policy | None, list[PolicyError]]:
    """Parse and validate a policy; errors carry the line and dotted key."""
    model, lines, errors = parse_toml_model(text, PolicyFile)
    if model is None:
        return None, errors
    errors = semantic_errors(model, lines)
    return (None, errors) if errors else (Policy(model), [])


def toml_error(exc: tomllib.TOMLDecodeError) -> PolicyError:
    match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
    return PolicyError(int(match.group(1)) if match else 0, "", f"TOML syntax: {message}")


def pydantic_errors(exc: ValidationError, lines: dict[Any, int]) -> list[PolicyError]:
    out = []
    for err in exc.errors():
        # pydantic adds the type name of union members to the location; TOML has no such key
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        message = err["msg"].removeprefix("Value error, ")
        out.append(PolicyError(line_of(lines, loc), dotted(loc), message))
    return out


_UNION_TAGS = {"str", "list[str]", "int", "function-after[_table(), dict[str,int]]"}


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            piece = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += ("." if out else "") + piece
    return out


def semantic_errors(model: PolicyFile, lines: dict[Any, int]) -> list[PolicyError]:
    errors: list[PolicyError] = []

    def add(path: tuple[str, ...], message: str) -> None:
        errors.append(PolicyError(line_of(lines, path), dotted(path), message))

    for name in _REQUIRED:
        if getattr(model.defaults, name) is None:
            add(("defaults",), f"{name} is required in [defaults]")
    owner: dict[str, str] = {}
    for name, prov in model.provider.items():
        if not _NAME.match(name):
            add(("provider", name), "provider name must be a valid routing key")
        for domain in prov.domains:
            if domain in owner:
                add(("provider", name, "domains"), f"{domain} is also listed by {owner[domain]}")
            owner[domain] = name
    for pool, section in model.pool.items():
        for name in section.provider:
            if name not in model.provider:
                add(("pool", pool, "provider", name), f"unknown provider {name!r}")
        wu = section.warmup
        if wu is not None:
            path = ("pool", pool, "warmup")
            if wu.schedule == "custom" and not wu.table and not wu.providers:
                add(path, "a custom schedule needs a table or per-provider tables")
            if wu.over_cap == "overflow" and not wu.overflow_pool:
                add(path, "over_cap = 'overflow' needs overflow_pool")
            if wu.overflow_pool and wu.overflow_pool == pool:
                add((*path, "overflow_pool"), "a pool cannot overflow into itself")
    return errors


def load_policy_text(text: str) -> Policy:
    policy, errors = validate_text(text)
    if policy is None:
        raise PolicyInvalid(errors)
    return policy


def load_policy(path: str | None = None) -> Policy:
    """A policy file, or the shipped shaping.toml."""
    if path:
        with open(path, encoding="utf-8") as fh:
            return load_policy_text(fh.read())
    return default_policy()


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    return load_policy_text(shipped_text("shaping.toml"))


def shipped_text(name: str) -> str:
    return resources.files("mailsluice.policy").joinpath(name).read_text(encoding="utf-8")
