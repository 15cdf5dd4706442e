"""The template sandbox: Jinja2's ImmutableSandboxedEnvironment (no attribute access to internals,
no mutation of lists and dicts, `range` capped) with the bounds Jinja2 does not have: time,
steps and memory of one rendering.

Jinja2's sandbox stops a template from reaching Python internals (`{{ ''.__class__ }}` is a
SecurityError) but not from running long or building huge strings. So here, per rendering (a
`Budget`, set around it by api/render.py):

- every loop iteration, `range` item and call takes a step; a rendering has `max_steps`, and
  the clock is checked on every step against its deadline;
- every piece of output (text and `{{ }}`, in the result or in a buffer: set blocks, macros,
  filter blocks) is counted, so all the text a rendering makes is bounded, not only the result;
- `*`, `**`, `+`, `%` and `~` refuse results over the output bound, and the filters and string
  methods that make text from a number (`center`, `ljust`, `format`, `batch`, ...) refuse widths
  over WIDTH_CAP; `replace` refuses a result estimated over the bound.

The loop and output guards are put into the parsed template (`_parse`), which is Jinja2's own
hook between parsing and code generation. Recursive loops, includes, imports and `extends` are
refused at compile time (there is nothing to include, and a recursive loop's inner iterations
would not pass the guard).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, StrictUndefined, nodes, pass_context
from jinja2.exceptions import TemplateSyntaxError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

# The largest width, count or repeat a filter or string method may be given.
WIDTH_CAP = 10_000
# `**` with an exponent above this, or on a base above this, is refused.
POWER_CAP = 64
LOOP_FILTER = "_ms_loop"
OUTPUT_FILTER = "_ms_output"
SIZE_FILTER = "_ms_size"
_WIDTH = re.compile(r"\d{5,}")  # a width or precision of 10,000 or more in a format
_WIDE_FILTERS = ("center", "indent", "batch", "slice", "truncate", "wordwrap")
_WIDE_METHODS = ("center", "ljust", "rjust", "zfill", "expandtabs")
_FORMAT_METHODS = ("format", "format_map")
_REFUSED_NODES = (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)


class RenderLimit(Exception):
    """A rendering went over one of its bounds (the message says which)."""


@dataclass
class Budget:
    """What one rendering may still spend."""

    steps: int
    output_chars: int
    max_chars: int  # the largest single string
    deadline: float
    clock: Callable[[], float] = field(default=time.monotonic)

    def step(self, count: int = 1) -> None:
        self.steps -= count
        if self.steps < 0:
            raise RenderLimit("too many loop iterations or calls")
        if self.clock() > self.deadline:
            raise RenderLimit("rendering took too long")

    def output(self, chars: int) -> None:
        self.output_chars -= chars
        if self.output_chars < 0:
            raise RenderLimit("rendering makes too much text")

    def sized(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple) and len(value) > self.max_chars:
            raise RenderLimit("a value grows over the output limit")
        return value


BUDGET: ContextVar[Budget | None] = ContextVar("mailsluice_render_budget", default=None)


def _budget() -> Budget:
    budget = BUDGET.get()
    if budget is None:
        # Compile-time constant folding runs without one: refusing makes Jinja2 leave the
        # expression to run time, where the budget is set.
        raise RenderLimit("no rendering budget")
    return budget


def _counted(items: Iterable[Any], budget: Budget) -> Iterator[Any]:
    for item in items:
        budget.step()
        yield item


@pass_context
def _loop(_: Context, items: Iterable[Any]) -> Iterator[Any]:
    return _counted(items, _budget())


@pass_context
def _output(_: Context, value: Any) -> Any:
    _budget().output(len(value) if isinstance(value, str) else len(str(value)))
    return value


@pass_context
def _size(_: Context, value: Any) -> Any:
    return _budget().sized(value)


def _range(*args: int) -> range:
    found = safe_range(*args)
    _budget().step(len(found))
    return found


def _check_widths(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int | float) and abs(arg) > WIDTH_CAP:
            raise RenderLimit(f"a width or count over {WIDTH_CAP}")


def _check_format(spec: Any) -> None:
    if isinstance(spec, str) and _WIDTH.search(spec):
        raise RenderLimit(f"a format width or precision over {WIDTH_CAP}")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if not isinstance(text, str) or not isinstance(new, str):
        return
    times = len(text) + 1 if not old else text.count(str(old))
    if len(text) + times * len(new) > _budget().max_chars:
        raise RenderLimit("replace makes a string over the output limit")


def _guarded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """A built-in filter with its size-making arguments checked first."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        # a filter that takes the context or environment gets it first: skip it
        values = [a for a in args if not isinstance(a, Context | EvalContext | Environment)]
        if name == "format":
            _check_format(values[0] if values else None)
        elif name == "replace" and len(values) >= 3:
            _check_replace(values[0], values[1], values[2])
        else:
            _check_widths([*values[1:], *kwargs.values()])
        return _budget().sized(original(*args, **kwargs))

    if hasattr(original, "jinja_pass_arg"):  # how Jinja2 knows what to pass first
        guarded.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with bounded renderings (see the module's docstring); StrictUndefined: a
    variable the data lacks is an error for that recipient, not an empty string."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=StrictUndefined, cache_size=0)
        self.globals["range"] = _range
        self.globals.pop("lipsum", None)  # makes text from a count
        self.filters[LOOP_FILTER] = _loop
        self.filters[OUTPUT_FILTER] = _output
        self.filters[SIZE_FILTER] = _size
        for name in (*_WIDE_FILTERS, "format", "replace"):
            self.filters[name] = _guarded_filter(name, self.filters[name])

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for refused in tree.find_all(_REFUSED_NODES):
            what = type(refused).__name__.lower()
            raise TemplateSyntaxError(f"{what} is not allowed", refused.lineno, name, filename)
        for loop in tree.find_all(nodes.For):
            if loop.recursive:
                raise TemplateSyntaxError("recursive loops are not allowed", loop.lineno)
            loop.iter = _filtered(loop.iter, LOOP_FILTER, loop.lineno)
        for output in tree.find_all(nodes.Output):
            output.nodes = [_output_node(item) for item in output.nodes]
        checked = _SizedConcat().visit(tree)
        assert isinstance(checked, nodes.Template)
        return checked

    def call(
        __self,
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _budget().step()
        _check_method(__obj, args, kwargs)
        return _budget().sized(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        if operator == "**" and _too_big_power(left, right):
            raise RenderLimit(f"a power over {POWER_CAP}")
        if operator == "*":
            _check_repeat(left, right, budget)
        if operator == "%":
            _check_format(left)
        return budget.sized(super().call_binop(context, operator, left, right))


class _SizedConcat(NodeTransformer):
    """Every `~` made into `(a ~ b)|_ms_size`: its result is checked, not only its parts."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filtered(node, SIZE_FILTER, node.lineno)


def _filtered(node: nodes.Node, name: str, lineno: int) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=lineno)


def _output_node(item: nodes.Expr) -> nodes.Expr:
    return _filtered(item, OUTPUT_FILTER, item.lineno)


def _too_big_power(left: Any, right: Any) -> bool:
    numbers = isinstance(left, int | float) and isinstance(right, int | float)
    return numbers and (abs(right) > POWER_CAP or abs(left) > 2**POWER_CAP)


def _check_repeat(left: Any, right: Any, budget: Budget) -> None:
    for seq, count in ((left, right), (right, left)):
        sequence = isinstance(seq, str | list | tuple) and isinstance(count, int)
        if sequence and len(seq) * count > budget.max_chars:
            raise RenderLimit("a repeat makes a value over the output limit")


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """String methods that make text from a number or grow it: their arguments checked."""
    target = getattr(obj, "__wrapped__", obj)  # str.format comes wrapped by the sandbox
    owner = getattr(target, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(target, "__name__", "")
    if name in _WIDE_METHODS:
        _check_widths([*args, *kwargs.values()])
    elif name in _FORMAT_METHODS:
        _check_format(owner)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1])
