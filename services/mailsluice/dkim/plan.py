"""Which selector signs a domain's mail at time t, and which selectors are published then.

Rotation: a new selector is published ahead (its key is installed, its TXT record put in DNS),
signing switches to it at its `active_from`, and the selector it replaces stays published for
`grace_s` after that (mail signed just before the switch is still being verified: queued,
retried, forwarded). Per domain and algorithm, the selector with the latest `active_from` not
after t signs; a key with no schedule entry is active from the epoch.

The schedule file (YAML or JSON):

    grace_days: 7
    domains:
      example.com:
        - {selector: s2026a, active_from: "2026-01-01T00:00:00Z"}
        - {selector: s2026b, active_from: "2026-07-01T00:00:00Z"}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from mailsluice.dkim.keys import ALGORITHMS, SigningKey

DEFAULT_GRACE_S = 7 * 86400.0


class ScheduleError(ValueError):
    """A schedule that cannot be followed: unreadable, or two selectors switching at once."""


@dataclass(frozen=True)
class Schedule:
    """When each (domain, selector) starts signing, and how long a replaced one stays published."""

    active_from: dict[tuple[str, str], float]
    grace_s: float = DEFAULT_GRACE_S


@dataclass(frozen=True)
class Published:
    """A selector that should be in DNS at some time, and whether it signs then."""

    key: SigningKey
    signing: bool


class SigningPlan:
    """Keys and their schedule; all answers are plain functions of the time given."""

    def __init__(self, keys: Sequence[SigningKey], schedule: Schedule | None = None) -> None:
        self.schedule = schedule or Schedule({})
        self._by_domain: dict[str, list[tuple[float, SigningKey]]] = {}
        for key in keys:
            start = self.schedule.active_from.get((key.domain, key.selector), 0.0)
            self._by_domain.setdefault(key.domain, []).append((start, key))
        for domain, entries in self._by_domain.items():
            entries.sort(key=lambda e: (e[1].algorithm, e[0]))
            seen = {(e[1].algorithm, e[0]) for e in entries}
            if len(seen) != len(entries):
                raise ScheduleError(f"{domain}: two selectors of one algorithm start together")

    @property
    def domains(self) -> list[str]:
        return sorted(self._by_domain)

    def signing_keys(self, domain: str, t: float) -> list[SigningKey]:
        """The keys that sign `domain`'s mail at t: at most one per algorithm, RSA first."""
        chosen = []
        for algorithm in ALGORITHMS:
            current = self._current(domain.lower(), algorithm, t)
            if current is not None:
                chosen.append(current[1])
        return chosen

    def published(self, domain: str, t: float) -> list[Published]:
        """The selectors that should be in DNS at t: the signing ones, those scheduled ahead, and
        those replaced less than the grace period ago."""
        entries = self._by_domain.get(domain.lower(), [])
        signing = {k.selector for k in self.signing_keys(domain, t)}
        out = []
        for i, (_start, key) in enumerate(entries):
            successor = next(
                (s for s, k in entries[i + 1 :] if k.algorithm == key.algorithm and s <= t), None
            )
            if successor is None or t < successor + self.schedule.grace_s:
                out.append(Published(key, key.selector in signing))
        return out

    def _current(self, domain: str, algorithm: str, t: float) -> tuple[float, SigningKey] | None:
        started = [e for e in self._by_domain.get(domain, []) if e[1].algorithm == algorithm]
        started = [e for e in started if e[0] <= t]
        return started[-1] if started else None


def parse_schedule(data: Any) -> Schedule:
    """A Schedule from the parsed file (see the module docstring)."""
    if not isinstance(data, dict):
        raise ScheduleError("the schedule must be a mapping with 'domains'")
    grace_s = float(data.get("grace_days", DEFAULT_GRACE_S / 86400)) * 86400
    active: dict[tuple[str, str], float] = {}
    for domain, entries in (data.get("domains") or {}).items():
        for entry in entries or []:
            try:
                selector = str(entry["selector"])
                when = _timestamp(entry["active_from"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ScheduleError(f"{domain}: bad entry {entry!r} ({exc})") from None
            active[(str(domain).lower().rstrip("."), selector)] = when
    return Schedule(active, grace_s)


def load_schedule(path: Path) -> Schedule:
    try:
        return parse_schedule(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ScheduleError(f"{path}: {exc}") from None


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float):
        return float(value)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("active_from needs a time zone (e.g. Z)")
    return moment.timestamp()
