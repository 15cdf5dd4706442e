"""Rendering a message's subject, text and HTML for each recipient, in the sandbox
(api/sandbox.py): compiled once per request, rendered once per recipient with that
recipient's data.

The HTML part is autoescaped, the subject and text are not (they are not HTML). A variable the
data lacks is an error (StrictUndefined), so a recipient never gets "Dear ," — test with
`is defined` or give a `default`. A rendering that fails (an undefined variable, a forbidden
attribute, a bound exceeded) refuses that recipient with the reason; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateError

from mailsluice.api.sandbox import BUDGET, Budget, GuardedEnvironment, RenderLimit

PARTS = ("subject", "text", "html")


@dataclass(frozen=True)
class RenderLimits:
    max_bytes: int  # one part's result, UTF-8
    max_steps: int  # loop iterations and calls of one recipient's rendering
    max_seconds: float  # one recipient's rendering


class TemplateInvalid(ValueError):
    """A template that does not compile: `part` names which (subject, text, html)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"{part}: {message}")
        self.part, self.message = part, message


class RenderFailed(Exception):
    """One recipient's rendering failed; the message says why, in a line."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True)
class Compiled:
    subject: Template
    text: Template | None
    html: Template | None


class Renderer:
    def __init__(self, limits: RenderLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._plain = GuardedEnvironment(autoescape=False)
        self._html = GuardedEnvironment(autoescape=True)

    def compile(self, subject: str, text: str | None, html: str | None) -> Compiled:
        """The three parts compiled; TemplateInvalid naming the first that does not."""
        return Compiled(
            self._compile(self._plain, "subject", subject),
            None if text is None else self._compile(self._plain, "text", text),
            None if html is None else self._compile(self._html, "html", html),
        )

    def check(self, subject: str, text: str | None, html: str | None) -> None:
        """Whether the parts compile (stored templates are checked on save)."""
        self.compile(subject, text, html)

    @staticmethod
    def _compile(env: GuardedEnvironment, part: str, source: str) -> Template:
        try:
            return env.from_string(source)
        except TemplateError as exc:
            raise TemplateInvalid(part, _line(exc)) from None
        except (RecursionError, MemoryError):  # a pathological nesting
            raise TemplateInvalid(part, "too deeply nested") from None

    def render(self, compiled: Compiled, variables: Mapping[str, Any]) -> Rendered:
        """One recipient's parts; RenderFailed saying why not."""
        limits = self.limits
        budget = Budget(
            steps=limits.max_steps,
            output_chars=4 * limits.max_bytes,  # room for buffers (set blocks, macros)
            max_chars=limits.max_bytes,
            deadline=self.clock() + limits.max_seconds,
            clock=self.clock,
        )
        token = BUDGET.set(budget)
        try:
            subject = self._part(compiled.subject, "subject", variables)
            text = None if compiled.text is None else self._part(compiled.text, "text", variables)
            html = None if compiled.html is None else self._part(compiled.html, "html", variables)
        finally:
            BUDGET.reset(token)
        # A subject is one line: line breaks from data become spaces, never a new header.
        return Rendered(" ".join(subject.split()), text, html)

    def _part(self, template: Template, part: str, variables: Mapping[str, Any]) -> str:
        try:
            result = template.render(variables)
        except RenderLimit as exc:
            raise RenderFailed(f"{part}: {exc}") from None
        except (RecursionError, MemoryError):
            raise RenderFailed(f"{part}: too deeply nested") from None
        except Exception as exc:  # whatever the template did with the data: that recipient's
            raise RenderFailed(f"{part}: {_line(exc)}") from None
        if len(result.encode("utf-8", "surrogatepass")) > self.limits.max_bytes:
            raise RenderFailed(f"{part}: over {self.limits.max_bytes} bytes")
        return result


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
