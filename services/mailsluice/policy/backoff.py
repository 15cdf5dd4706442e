"""Adaptive backoff rules as validated data (the shipped pack is backoff.toml).

A rule matches a remote reply by regular expressions on its code, enhanced code and text (all
given ones must match; the text is searched case-insensitively after the reply's repeated code
prefixes are removed), for one provider or every destination ("*"). When it has matched
`trigger` times ("immediate", or "3/10m": three times within ten minutes) it acts:

- suspend: send nothing to the destination for `duration`;
- throttle: cut the destination's rate (`rate` absolute or `rate_factor`) and/or connections
  (`connection_limit`) for `duration`, then recover in `recovery_steps` steps of
  `recovery_step` each (PowerMTA's backoff mode, KumoMTA's traffic shaping automation);
- bounce: treat this reply as permanent for the message (e.g. "Retrying will NOT succeed").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mailsluice.policy.replies import normalize_text
from mailsluice.policy.shaping import PolicyError, PolicyInvalid, parse_toml_model
from mailsluice.policy.shaping import shipped_text as _shipped_text
from mailsluice.policy.tomlpos import line_of
from mailsluice.policy.units import Threshold, parse_duration, parse_rate, parse_threshold

Action = Literal["suspend", "throttle", "bounce"]

__all__ = [
    "Action",
    "BackoffRule",
    "RecoveryDefaults",
    "RuleModel",
    "RulesFile",
    "compile_rules",
    "default_rules",
    "load_rules",
    "load_rules_text",
    "normalize_text",
    "validate_rules_text",
]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class RecoveryDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recovery_steps: int = Field(default=4, ge=0, le=100)
    recovery_step: str = "15m"

    @field_validator("recovery_step")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,80}$")
    provider: str = "*"
    code: str | None = None
    enhanced: str | None = None
    text: str | None = None
    trigger: str = "immediate"
    action: Action
    duration: str | None = None
    rate: str | None = None
    rate_factor: float | None = Field(default=None, gt=0, le=1)
    connection_limit: int | None = Field(default=None, ge=1)
    recovery_steps: int | None = Field(default=None, ge=0, le=100)
    recovery_step: str | None = None
    note: str = ""

    @field_validator("code", "enhanced", "text")
    @classmethod
    def _patterns(cls, value: str | None) -> str | None:
        return None if value is None else _regex(value)

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, value: str) -> str:
        parse_threshold(value)
        return value

    @field_validator("duration", "recovery_step")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RuleModel:
        if self.code is None and self.enhanced is None and self.text is None:
            raise ValueError("a rule needs at least one of code, enhanced, text")
        if self.action in ("suspend", "throttle") and self.duration is None:
            raise ValueError(f"action {self.action} needs a duration")
        throttles = (self.rate, self.rate_factor, self.connection_limit)
        if self.action == "throttle" and all(v is None for v in throttles):
            raise ValueError("throttle needs rate, rate_factor or connection_limit")
        if self.action != "throttle" and any(v is not None for v in throttles):
            raise ValueError("rate, rate_factor and connection_limit belong to throttle rules")
        if self.rate is not None and self.rate_factor is not None:
            raise ValueError("give rate or rate_factor, not both")
        return self


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    defaults: RecoveryDefaults = RecoveryDefaults()
    rule: list[RuleModel] = []


@dataclass(frozen=True)
class BackoffRule:
    """A compiled rule."""

    name: str
    provider: str
    code: re.Pattern[str] | None
    enhanced: re.Pattern[str] | None
    text: re.Pattern[str] | None
    trigger: Threshold
    action: Action
    duration: float
    rate: float | None  # messages per second during the hold
    rate_factor: float | None
    connection_limit: int | None
    recovery_steps: int
    recovery_step: float

    def applies_to(self, provider: str | None) -> bool:
        return self.provider in ("*", provider)

    def matches(self, code: int, enhanced: str, text: str) -> bool:
        return (
            (self.code is None or self.code.search(str(code)) is not None)
            and (self.enhanced is None or self.enhanced.search(enhanced) is not None)
            and (self.text is None or self.text.search(text) is not None)
        )


def compile_rules(model: RulesFile) -> list[BackoffRule]:
    out = []
    for r in model.rule:
        rate = parse_rate(r.rate).per_second if r.rate else None
        out.append(
            BackoffRule(
                name=r.name,
                provider=r.provider,
                code=re.compile(r.code) if r.code is not None else None,
                enhanced=re.compile(r.enhanced) if r.enhanced is not None else None,
                text=re.compile(r.text, re.IGNORECASE) if r.text is not None else None,
                trigger=parse_threshold(r.trigger),
                action=r.action,
                duration=parse_duration(r.duration) if r.duration else 0.0,
                rate=rate,
                rate_factor=r.rate_factor,
                connection_limit=r.connection_limit,
                recovery_steps=(
                    r.recovery_steps
                    if r.recovery_steps is not None
                    else model.defaults.recovery_steps
                ),
                recovery_step=parse_duration(r.recovery_step or model.defaults.recovery_step),
            )
        )
    return out


def validate_rules_text(text: str) -> tuple[list[BackoffRule] | None, list[PolicyError]]:
    model, lines, errors = parse_toml_model(text, RulesFile)
    if model is None:
        return None, errors
    seen: dict[str, int] = {}
    for i, r in enumerate(model.rule):
        if r.name in seen:
            path: tuple[Any, ...] = ("rule", i, "name")
            errors.append(
                PolicyError(line_of(lines, path), f"rule[{i}].name", f"duplicate name {r.name}")
            )
        seen[r.name] = i
    if errors:
        return None, errors
    return compile_rules(model), []


def load_rules_text(text: str) -> list[BackoffRule]:
    rules, errors = validate_rules_text(text)
    if rules is None:
        raise PolicyInvalid(errors)
    return rules


def load_rules(path: str | None = None) -> list[BackoffRule]:
    if path:
        with open(path, encoding="utf-8") as fh:
            return load_rules_text(fh.read())
    return list(default_rules())


@lru_cache(maxsize=1)
def default_rules() -> tuple[BackoffRule, ...]:
    return tuple(load_rules_text(_shipped_text("backoff.toml")))
