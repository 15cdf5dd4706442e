"""Remote replies as classes: what a reply says about sending from this source to this
destination.

Shaping reacts to the class of a reply, not to its text: the provider texts of the rule pack
(replies.toml) map to classes, and the controller (delivery/shaping/controller.py) knows what
each class means for the rate, the connections and the messages per connection.

A rule matches a 4xx or 5xx reply by regular expressions on its code, enhanced code and text
(all given ones must match; the text is searched case-insensitively after the reply's repeated
code prefixes are removed), optionally only in some phases of the dialogue, for one provider or
for every destination ("*"). A provider's own rules are tried first, then the "*" rules, each in
file order; the first match decides. A reply no rule matches falls back on its codes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mailsluice.policy.shaping import PolicyError, PolicyInvalid, dotted, parse_toml_model
from mailsluice.policy.shaping import shipped_text as _shipped_text
from mailsluice.policy.tomlpos import line_of
from mailsluice.policy.units import parse_duration


class ReplyClass(StrEnum):
    """The closed set of reply classes."""

    SUCCESS = "success"
    RATE = "rate"  # too fast: rate-limited
    CONNECTIONS = "connections"  # too many concurrent connections
    PER_CONNECTION = "per_connection"  # messages-per-connection cap: reconnect at once
    REPUTATION = "reputation"  # reputation or policy deferral of this source
    BLOCK = "block"  # refuses everything from this source for a while
    # This recipient or message only (mailbox full, unknown user, content): never a signal
    # about the destination.
    RECIPIENT = "recipient"
    SERVER = "server"  # transient server trouble: busy, down, refused, dropped


# Where in the SMTP dialogue a reply came.
Phase = Literal["connect", "greeting", "ehlo", "tls", "mail", "rcpt", "data"]

# A 5xx before the sender said anything about a message refuses the source itself.
_SOURCE_PHASES = frozenset({"greeting", "ehlo"})

# RFC 3463 subject of a 4xx enhanced code -> class, when no rule matched. X.7 is security or
# policy (reputation deferrals); X.1/X.2/X.5/X.6 concern the address, the mailbox, the
# protocol exchange or the content of this message; X.3/X.4 the mail system or the network.
_SUBJECT_CLASS = {
    "0": ReplyClass.SERVER,
    "1": ReplyClass.RECIPIENT,
    "2": ReplyClass.RECIPIENT,
    "3": ReplyClass.SERVER,
    "4": ReplyClass.SERVER,
    "5": ReplyClass.RECIPIENT,
    "6": ReplyClass.RECIPIENT,
    "7": ReplyClass.REPUTATION,
}

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_EXAMPLE = re.compile(r"^([2-5]\d\d)(?:[ -]|$)")
_ENHANCED_PREFIX = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")


@dataclass(frozen=True)
class Classified:
    """The class of one reply and what decided it."""

    cls: ReplyClass
    rule: str  # rule name, or "code:<fallback>" e.g. "code:4.7", "code:421"; or "success"
    bounce: bool = False  # a transient reply the provider says will never succeed


def _regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class ReplyRuleModel(BaseModel):
    """One [[rule]] of a replies file, as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,80}$")
    provider: str = Field(default="*", min_length=1)
    code: str | None = None
    enhanced: str | None = None
    text: str | None = None
    phase: list[Phase] | None = Field(default=None, min_length=1)
    cls: ReplyClass = Field(alias="class")
    bounce: bool = Field(default=False, strict=True)  # TOML has booleans: no "yes"
    min_block: str | None = None
    note: str = ""
    examples: list[str] = []

    @field_validator("code", "enhanced", "text")
    @classmethod
    def _patterns(cls, value: str | None) -> str | None:
        return _regex(value)

    @field_validator("min_block")
    @classmethod
    def _min_block(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        given = info.data.get("cls")
        if given is not None and given != ReplyClass.BLOCK:
            raise ValueError(f"min_block belongs to block rules, not to class {given.value}")
        parse_duration(value)
        return value

    @field_validator("examples")
    @classmethod
    def _examples(cls, value: list[str]) -> list[str]:
        for i, example in enumerate(value):
            if parse_example(example) is None:
                raise ValueError(
                    f'example {i} is not a reply ("<code> <enhanced> text"): {example!r}'
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ReplyRuleModel:
        if self.code is None and self.enhanced is None and self.text is None:
            raise ValueError("a rule needs at least one of code, enhanced, text")
        return self


class RepliesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    rule: list[ReplyRuleModel] = []


@dataclass(frozen=True)
class ReplyRule:
    """A compiled rule."""

    name: str
    provider: str  # a provider name, or "*" for every destination
    code: re.Pattern[str] | None
    enhanced: re.Pattern[str] | None
    text: re.Pattern[str] | None
    phases: frozenset[str]  # empty: every phase
    cls: ReplyClass
    bounce: bool = False
    min_block: float | None = None  # seconds; block rules whose text names its own duration
    note: str = ""
    examples: tuple[str, ...] = ()

    def matches(self, code: int, enhanced: str, text: str, phase: str) -> bool:
        """Whether the rule matches a reply whose text is already normalized."""
        return (
            (not self.phases or phase in self.phases)
            and (self.code is None or self.code.search(str(code)) is not None)
            and (self.enhanced is None or self.enhanced.search(enhanced) is not None)
            and (self.text is None or self.text.search(text) is not None)
        )


def normalize_text(code: int, enhanced: str, text: str) -> str:
    """One line of reply text without the code / enhanced code each line of a multi-line
    reply repeats ("421-4.7.28 ... 421-4.7.28 ..."), so patterns may span lines."""
    out = " ".join(text.split())
    if code:
        out = re.sub(rf"(?:^|(?<=\s)){code}[ -]", "", out)
    if enhanced:
        out = re.sub(rf"(?:^|(?<=\s)){re.escape(enhanced)}(?=\s|$)", "", out)
    return " ".join(out.split())


def parse_example(raw: str) -> tuple[int, str, str] | None:
    """(code, enhanced, text) of a reply written as "<code> <enhanced> text" (the enhanced code
    may be missing: then X.0.0, as the transport reports it); None if it is not a reply."""
    raw = raw.strip()
    if _EXAMPLE.match(raw) is None:
        return None
    code, rest = int(raw[:3]), raw[4:].strip()
    match = _ENHANCED_PREFIX.match(rest)
    if match is None or match.group(1)[0] != raw[0]:
        return code, f"{raw[0]}.0.0", rest
    return code, match.group(1), rest[match.end() :]


def classify(
    code: int,
    enhanced: str,
    text: str,
    *,
    phase: Phase,
    provider: str | None,
    rules: Sequence[ReplyRule] | None = None,
) -> Classified:
    """The class of a remote reply. Only 4xx and 5xx replies are matched against the rules: a
    2xx is a success whatever its text says."""
    if 200 <= code < 300:
        return Classified(ReplyClass.SUCCESS, "success")
    if not 400 <= code < 600:
        return Classified(ReplyClass.SERVER, f"code:{code}")  # not a reply SMTP allows here
    pack = default_replies() if rules is None else rules
    clean = normalize_text(code, enhanced, text)
    for rule in ordered(pack, provider):
        if rule.matches(code, enhanced, clean, phase):
            return Classified(rule.cls, rule.name, rule.bounce)
    return fallback(code, enhanced, phase)


def ordered(rules: Sequence[ReplyRule], provider: str | None) -> list[ReplyRule]:
    """The rules that apply to a provider's destinations, in the order they are tried."""
    own = [r for r in rules if provider not in (None, "*") and r.provider == provider]
    return own + [r for r in rules if r.provider == "*"]


def fallback(code: int, enhanced: str, phase: str) -> Classified:
    """The class of a 4xx or 5xx reply no rule matched, from its codes and phase."""
    if code >= 500:
        cls = ReplyClass.BLOCK if phase in _SOURCE_PHASES else ReplyClass.RECIPIENT
        return Classified(cls, f"code:{code}")
    match = _ENHANCED.match(enhanced)
    if match is None or match.group(2, 3) == ("0", "0"):
        return Classified(ReplyClass.SERVER, f"code:{code}")
    subject = match.group(2)
    return Classified(
        _SUBJECT_CLASS.get(subject, ReplyClass.SERVER), f"code:{match.group(1)}.{subject}"
    )


def compile_rules(model: RepliesFile) -> list[ReplyRule]:
    def pattern(value: str | None, flags: int = 0) -> re.Pattern[str] | None:
        return None if value is None else re.compile(value, flags)

    return [
        ReplyRule(
            name=r.name,
            provider=r.provider,
            code=pattern(r.code),
            enhanced=pattern(r.enhanced),
            text=pattern(r.text, re.IGNORECASE),
            phases=frozenset(r.phase or ()),
            cls=r.cls,
            bounce=r.bounce,
            min_block=parse_duration(r.min_block) if r.min_block is not None else None,
            note=r.note,
            examples=tuple(r.examples),
        )
        for r in model.rule
    ]


def example_phase(rule: ReplyRule) -> Phase:
    """The phase a rule's examples are classified in: the earliest of the rule's phases in the
    dialogue, else RCPT."""
    phases: tuple[Phase, ...] = ("connect", "greeting", "ehlo", "tls", "mail", "rcpt", "data")
    return next((p for p in phases if p in rule.phases), "rcpt")


def example_errors(rules: Sequence[ReplyRule]) -> list[tuple[int, int, str]]:
    """(rule index, example index, message) for every example that does not classify to its
    own rule (for the rule's provider, in its example_phase)."""
    out = []
    for i, rule in enumerate(rules):
        provider = None if rule.provider == "*" else rule.provider
        for j, raw in enumerate(rule.examples):
            parsed = parse_example(raw)
            if parsed is None:
                continue  # reported by the model's validation
            got = classify(*parsed, phase=example_phase(rule), provider=provider, rules=rules)
            if got.rule != rule.name:
                out.append((i, j, f"example {j} classifies as {got.rule} ({got.cls.value})"))
    return out


def validate_replies_text(text: str) -> tuple[list[ReplyRule] | None, list[PolicyError]]:
    """Parse and validate a replies file; errors carry the line and dotted key."""
    model, lines, errors = parse_toml_model(text, RepliesFile)
    if model is None:
        return None, errors
    seen: set[str] = set()
    for i, r in enumerate(model.rule):
        if r.name in seen:
            path: tuple[Any, ...] = ("rule", i, "name")
            message = f"duplicate name {r.name}"
            errors.append(PolicyError(line_of(lines, path), dotted(path), message))
        seen.add(r.name)
    rules = compile_rules(model)
    for i, j, message in example_errors(rules):
        path = ("rule", i, "examples", j)
        errors.append(PolicyError(line_of(lines, path), dotted(path), message))
    return (None, errors) if errors else (rules, [])


def load_replies_text(text: str) -> list[ReplyRule]:
    rules, errors = validate_replies_text(text)
    if rules is None:
        raise PolicyInvalid(errors)
    return rules


def load_replies(path: str | None = None) -> list[ReplyRule]:
    """The rules of a replies file; the shipped pack when no path is given."""
    if path:
        with open(path, encoding="utf-8") as fh:
            return load_replies_text(fh.read())
    return list(default_replies())


@lru_cache(maxsize=1)
def default_replies() -> tuple[ReplyRule, ...]:
    return tuple(load_replies_text(_shipped_text("replies.toml")))
