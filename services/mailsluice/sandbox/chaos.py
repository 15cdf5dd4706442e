"""Scripted failures of the sandbox MX, in the spirit of Mailpit's chaos triggers.

Mailpit's triggers (`Sender`, `Recipient`, `Authentication`, each `{"ErrorCode", "Probability"}`
with a probability in percent) are kept as they are; `Rules` adds what a delivery test needs: a
stage (`mail`, `rcpt`, `data`), an address pattern (shell-style, case-insensitive: `*@gmail.test`),
an optional reply text. The first rule whose stage and pattern match, and whose dice roll says
so, answers instead of acceptance. At `data` a rule matches when any recipient of the
transaction does. A 421 also closes the connection (the caller does that).

    {"Recipient": {"ErrorCode": 451, "Probability": 5},
     "Rules": [{"Stage": "rcpt", "Pattern": "*@slow.test", "ErrorCode": 421, "Probability": 100}]}

Standard library only, so the tests' fake MX can use the same matching.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STAGES = ("mail", "rcpt", "data")
# Mailpit's trigger names and the stage each applies at; the sandbox offers no AUTH, so an
# Authentication trigger is kept (clients set it) but never fires.
TRIGGERS = {"Sender": "mail", "Recipient": "rcpt", "Authentication": "auth"}

# Usual enhanced code and text of a reply, by code.
TEXTS = {
    421: ("4.7.0", "Too many errors, closing connection"),
    450: ("4.2.0", "Mailbox temporarily unavailable"),
    451: ("4.3.0", "Local error in processing, try again later"),
    452: ("4.5.3", "Too many recipients"),
    550: ("5.1.1", "No such user here"),
    552: ("5.2.2", "Mailbox full"),
    553: ("5.1.3", "Bad recipient address syntax"),
    554: ("5.7.1", "Rejected by policy"),
}


class ChaosError(ValueError):
    """A chaos configuration that cannot be used (the API answers 400 with its text)."""


def reply_text(code: int, text: str | None = None) -> str:
    enhanced, default = TEXTS.get(code, (f"{code // 100}.0.0", "Chaos trigger"))
    return f"{code} {enhanced} {text or default}"


@dataclass(frozen=True)
class Rule:
    stage: str  # mail, rcpt, data (or auth for Mailpit's Authentication trigger)
    pattern: str  # shell-style, matched against the lower-cased address
    code: int
    probability: float  # percent, 0..100
    text: str | None = None

    def matches(self, stage: str, addresses: Iterable[str]) -> bool:
        if stage != self.stage or self.probability <= 0:
            return False
        pattern = self.pattern.lower()
        return any(fnmatch.fnmatchcase(a.lower().strip("<>"), pattern) for a in addresses)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Stage": self.stage,
            "Pattern": self.pattern,
            "ErrorCode": self.code,
            "Probability": self.probability,
        }
        if self.text:
            out["Text"] = self.text
        return out


def _number(raw: Mapping[str, Any], key: str, low: float, high: float, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ChaosError(f"{where}.{key} must be a number from {low:g} to {high:g}")
    return float(value)


def _rule(raw: Any, where: str, stage: str | None = None, pattern: str = "*") -> Rule:
    if not isinstance(raw, Mapping):
        raise ChaosError(f"{where} must be an object")
    if stage is None:
        stage = str(raw.get("Stage", "")).lower()
        if stage not in STAGES:
            raise ChaosError(f"{where}.Stage must be one of {', '.join(STAGES)}")
        pattern = str(raw.get("Pattern") or "*")
    code = int(_number(raw, "ErrorCode", 400, 599, where))
    probability = _number(raw, "Probability", 0, 100, where)
    text = raw.get("Text")
    return Rule(stage, pattern, code, probability, str(text) if text else None)


@dataclass(frozen=True)
class Triggers:
    """The whole configuration: Mailpit's three triggers and our rules."""

    triggers: tuple[tuple[str, Rule], ...] = ()
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> Triggers:
        """From the JSON of PUT /api/v1/chaos; omitted triggers are off, as in Mailpit."""
        if raw is None or raw == "":
            return cls()
        if not isinstance(raw, Mapping):
            raise ChaosError("chaos triggers must be a JSON object")
        unknown = set(raw) - {*TRIGGERS, "Rules"}
        if unknown:
            raise ChaosError(f"unknown chaos keys: {', '.join(sorted(unknown))}")
        triggers = tuple(
            (name, _rule(raw[name], name, stage=stage))
            for name, stage in TRIGGERS.items()
            if raw.get(name) is not None
        )
        rules_raw = raw.get("Rules") or []
        if not isinstance(rules_raw, list):
            raise ChaosError("Rules must be a list")
        rules = tuple(_rule(r, f"Rules[{i}]") for i, r in enumerate(rules_raw))
        return cls(triggers, rules)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: {"ErrorCode": 0, "Probability": 0} for name in TRIGGERS
        }  # Mailpit reports the unset triggers as zero
        for name, rule in self.triggers:
            out[name] = {"ErrorCode": rule.code, "Probability": rule.probability}
        out["Rules"] = [r.to_json() for r in self.rules]
        return out

    def ordered(self) -> tuple[Rule, ...]:
        # Specific rules first: a pattern says more than Mailpit's catch-all triggers.
        return (*self.rules, *(rule for _, rule in self.triggers))


class Chaos:
    """The current triggers and the dice; `verdict` is the reply to give, or None to go on."""

    def __init__(self, triggers: Triggers | None = None, seed: int | None = None) -> None:
        self.triggers = triggers or Triggers()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.fired = 0

    def set(self, triggers: Triggers) -> None:
        self.triggers = triggers

    def seed(self, seed: int | None) -> None:
        with self._lock:
            self._random.seed(seed)

    def verdict(self, stage: str, addresses: Iterable[str]) -> str | None:
        addresses = list(addresses)
        for rule in self.triggers.ordered():
            if not rule.matches(stage, addresses):
                continue
            with self._lock:
                hit = rule.probability >= 100 or self._random.random() * 100 < rule.probability
            if hit:
                self.fired += 1
                return reply_text(rule.code, rule.text)
        return None
