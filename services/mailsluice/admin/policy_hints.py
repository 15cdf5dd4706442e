"""What `mailsluice policy check` adds to a file's errors: "did you mean X?" for a misspelt key
(the keys allowed at that place of the file, from the file's pydantic model), and the reply rules
whose provider no shaping policy knows (such a rule never matches: the delivery side names a
destination's provider from the shaping policy's [provider.*] tables).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from collections.abc import Iterable, Sequence
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from mailsluice.policy.replies import ReplyRule
from mailsluice.policy.shaping import PolicyError, dotted
from mailsluice.policy.tomlpos import key_lines, line_of

EXTRA_KEY = "Extra inputs are not permitted"
_PART = re.compile(r'"([^"]*)"|\[(\d+)\]|([A-Za-z0-9_-]+)')


def parse_dotted(key: str) -> list[str | int]:
    """The path of a dotted key as shaping.dotted() writes it: `pool."a.b".provider[2]`."""
    path: list[str | int] = []
    for quoted, index, bare in _PART.findall(key):
        path.append(int(index) if index else quoted or bare)
    return path


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a union (X | None, Union[...]); [annotation] otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> list[Any]:
    """The annotations one path part below annotation leads to."""
    out: list[Any] = []
    for member in _members(annotation):
        origin, args = get_origin(member), get_args(member)
        if isinstance(member, type) and issubclass(member, BaseModel) and isinstance(part, str):
            for name, field in member.model_fields.items():
                if part in (name, field.alias):
                    out.append(field.annotation)
        elif origin is dict and len(args) == 2 and isinstance(part, str):
            out.append(args[1])
        elif origin is list and args and isinstance(part, int):
            out.append(args[0])
    return out


def keys_at(model: type[BaseModel], path: Sequence[str | int]) -> set[str]:
    """The keys a file of this model allows in the table at path (as the file writes them)."""
    found: list[Any] = [model]
    for part in path:
        found = [after for annotation in found for after in _step(annotation, part)]
    keys: set[str] = set()
    for annotation in found:
        for member in _members(annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                keys |= {field.alias or name for name, field in member.model_fields.items()}
    return keys


def suggest(word: str, known: Iterable[str]) -> str:
    """ "did you mean X?" for the closest known word; "" when none is close."""
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f"did you mean {close[0]}?" if close else ""


def with_key_hints(errors: list[PolicyError], model: type[BaseModel]) -> list[PolicyError]:
    """The errors, an unknown key's with the closest allowed key named."""
    out = []
    for error in errors:
        path = parse_dotted(error.key)
        if error.message == EXTRA_KEY and path and isinstance(path[-1], str):
            known = keys_at(model, path[:-1])
            hint = suggest(path[-1], known)
            message = f"unknown key {path[-1]!r}" + (f" ({hint})" if hint else "")
            if not hint and known:
                message += f" (allowed here: {', '.join(sorted(known))})"
            out.append(dataclasses.replace(error, message=message))
        else:
            out.append(error)
    return out


def unknown_providers(rules: Sequence[ReplyRule], known: set[str], text: str) -> list[PolicyError]:
    """An error for each reply rule (of this file's text) whose provider is neither "*" nor a
    known provider."""
    lines = key_lines(text)
    errors = []
    for i, rule in enumerate(rules):
        if rule.provider == "*" or rule.provider in known:
            continue
        hint = suggest(rule.provider, known) or f"known: {', '.join(sorted(known))}"
        message = f"unknown provider {rule.provider!r} ({hint}); a rule for it never matches"
        path = ("rule", i, "provider")
        errors.append(PolicyError(line_of(lines, path), dotted(path), message))
    return errors
