"""A pool's warm-up as configured ([pool.<name>.warmup] of a policy file, or the pool overrides
from the SendingPool resource), validated: which schedule, from when, and for which of the
pool's source addresses.

Each source address of the pool warms up on its own (its own day, caps and ledger records).
Every address starts on `start` unless `sources` gives it its own start date, or "warm" (an
address that is already established: no cap). `source`, the form of earlier releases, names
the one address that warms up, the pool's others being warm. A pool that lists no source
addresses sends from its host's own address, which warms up from `start`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

# Names the warm-up module implements (a test keeps both in step).
WARMUP_PRESETS = ("sendgrid-like", "ses-45-day")

Warm = Literal["warm"]


class WarmupConfig(BaseModel):
    """A pool's warm-up: a preset or a custom day -> volume table that each source address of
    the pool follows on its own (its own day, caps and ledger records).

    Every address starts on `start` unless `sources` gives it its own start date, or "warm"
    (no cap: an address that is already established). `source` names the one address that
    warms up, the pool's others being warm (`sources = {source = start}` in short); it cannot
    be combined with `sources`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: str = "sendgrid-like"
    start: date
    source: str = ""  # the one address that warms up; "" = every address of the pool
    sources: dict[str, date | Warm] = {}  # address -> its own start date, or "warm"
    table: dict[str, int] = {}  # custom schedule: day number -> cap per period
    period: Literal["hour", "day"] = "day"  # period of a custom table's caps
    providers: dict[str, dict[str, int]] = {}  # per-provider custom tables (same period)
    over_cap: Literal["defer", "overflow"] = "defer"
    overflow_pool: str = ""
    after_end: Literal["unlimited", "hold"] = "unlimited"

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if value not in (*WARMUP_PRESETS, "custom"):
            raise ValueError(f"unknown schedule {value!r}; one of {[*WARMUP_PRESETS, 'custom']}")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return source_address(value) if value else value

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, object] = {}
        for address, start in value.items():
            norm = source_address(str(address))
            if norm in out:
                raise ValueError(f"source address {address} given twice")
            out[norm] = _start_or_warm(norm, start)
        return out

    @model_validator(mode="after")
    def _one_way(self) -> WarmupConfig:
        if self.source and self.sources:
            raise ValueError("give either source (the one address that warms up) or sources")
        return self

    def start_of(self, address: str) -> date | None:
        """The day 1 of `address`'s warm-up; None: the address is warm (no cap)."""
        if not address:  # the pool sends from its host's own address: that one warms up
            return self.start
        if self.source:
            return self.start if source_address(address) == self.source else None
        found = self.sources.get(source_address(address), self.start)
        return None if found == "warm" else found

    @field_validator("table")
    @classmethod
    def _table(cls, value: dict[str, int]) -> dict[str, int]:
        return _check_table(value)

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for table in value.values():
            _check_table(table)
        return value


def source_address(text: str) -> str:
    """A source address in normal form (as delivery workers list them); ValueError otherwise."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(
            f"source address {text!r} is not an IP address (like 192.0.2.10 or 2001:db8::1)"
        ) from None


def _start_or_warm(address: str, value: object) -> date | Warm:
    if isinstance(value, date) or value == "warm":
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(
            f'{address}: give its warm-up start date (YYYY-MM-DD) or "warm", not {value!r}'
        ) from None


def _check_table(table: Mapping[str, int]) -> dict[str, int]:
    for day, volume in table.items():
        if not day.isdigit() or int(day) < 1:
            raise ValueError(f"day {day!r} must be a whole number >= 1")
        if volume < 0:
            raise ValueError(f"volume of day {day} must be >= 0")
    return dict(table)
