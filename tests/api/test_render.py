"""The template sandbox: Jinja2's own (no attributes of Python internals) plus the bounds of a
rendering this project adds (steps, time on a simulated clock, output, widths), per recipient."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mailsluice.api.render import Renderer, RenderFailed, RenderLimits, TemplateInvalid

LIMITS = RenderLimits(max_bytes=100_000, max_steps=10_000, max_seconds=1.0)


def renderer(limits: RenderLimits = LIMITS) -> Renderer:
    # a clock that never moves: only the step and size bounds can stop a rendering
    return Renderer(limits, clock=lambda: 0.0)


def text(source: str, data: dict[str, Any] | None = None, limits: RenderLimits = LIMITS) -> str:
    r = renderer(limits)
    rendered = r.render(r.compile("s", source, None), data or {})
    assert rendered.text is not None
    return rendered.text


def failure(source: str, data: dict[str, Any] | None = None) -> str:
    with pytest.raises(RenderFailed) as caught:
        text(source, data)
    return str(caught.value)


def test_each_recipient_gets_its_own_data() -> None:
    r = renderer()
    compiled = r.compile("Hi {{ first }}", "Code {{ code }}", "<p>{{ first }}</p>")
    ann = r.render(compiled, {"first": "Ann", "code": 1})
    bob = r.render(compiled, {"first": "Bob", "code": 2})
    assert (ann.subject, ann.text, ann.html) == ("Hi Ann", "Code 1", "<p>Ann</p>")
    assert (bob.subject, bob.text, bob.html) == ("Hi Bob", "Code 2", "<p>Bob</p>")


def test_html_is_autoescaped_and_text_and_subject_are_not() -> None:
    r = renderer()
    out = r.render(r.compile("{{ v }}", "{{ v }}", "<b>{{ v }}</b>"), {"v": "<i>&"})
    assert out.subject == "<i>&"
    assert out.text == "<i>&"
    assert out.html == "<b>&lt;i&gt;&amp;</b>"


def test_a_subject_is_one_line_whatever_the_data() -> None:
    r = renderer()
    out = r.render(r.compile("Hi {{ v }}", "x", None), {"v": "a\r\nBcc: victim@example.com"})
    assert out.subject == "Hi a Bcc: victim@example.com"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ x.items.__self__ }}",
    ],
)
def test_python_internals_are_out_of_reach(source: str) -> None:
    assert "unsafe" in failure(source, {"x": {"a": 1}})


def test_data_cannot_be_changed_by_a_template() -> None:
    assert "unsafe" in failure("{{ x.append(1) }}{{ x }}", {"x": [1]})


def test_a_missing_variable_is_an_error_not_an_empty_string() -> None:
    assert "'first' is undefined" in failure("Dear {{ first }},")
    assert text("{{ first | default('friend') }}") == "friend"
    assert text("{% if first is defined %}x{% else %}y{% endif %}") == "y"


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(200) %}{% for j in range(200) %}{% endfor %}{% endfor %}",
        "{% for a in x %}{% for b in x %}{% for c in x %}{% endfor %}{% endfor %}{% endfor %}",
        # no loop at all: exponential macro recursion
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
    ],
)
def test_loops_and_calls_are_bounded(source: str) -> None:
    assert "too many loop iterations or calls" in failure(source, {"x": list(range(100))})


def test_a_rendering_is_bounded_in_time_on_its_clock() -> None:
    ticks = itertools.count()
    r = Renderer(LIMITS, clock=lambda: next(ticks) * 0.01)  # each look at the clock: 10 ms
    compiled = r.compile("s", "{% for i in x %}{{ i }}{% endfor %}", None)
    assert r.render(compiled, {"x": list(range(50))}).text is not None  # 0.5 s
    with pytest.raises(RenderFailed, match="took too long"):
        r.render(compiled, {"x": list(range(200))})  # 2 s


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 1000000 }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ 'x'.center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '%999999999s' % 1 }}",
        "{{ '%999999999s' | format(1) }}",
        "{{ 2 ** 100000 }}",
        "{{ 'ab' | replace('', 'y' * 9000) * 1 }}{{ s | replace('', 'z' * 9000) }}",
        "{{ x | batch(1000000000, 'f') | list }}",
    ],
)
def test_values_cannot_grow_past_the_bounds(source: str) -> None:
    reason = failure(source, {"x": [1], "s": "q" * 50})
    assert "over" in reason or "limit" in reason, reason


def test_doubling_a_string_stops_at_the_output_limit() -> None:
    source = "{% set s = 'x' * 60000 %}{% set s = s ~ s %}{{ s | length }}"
    assert "over the output limit" in failure(source)


def test_text_made_in_buffers_counts_too() -> None:
    # a set block, a macro: nothing reaches the result until the end, all of it is counted
    source = "{% set s %}{% for i in range(2000) %}{{ big }}{% endfor %}{% endset %}{{ s|length }}"
    assert "too much text" in failure(source, {"big": "y" * 1000})


def test_a_result_over_the_limit_refuses_the_recipient() -> None:
    small = RenderLimits(max_bytes=100, max_steps=10_000, max_seconds=1.0)
    assert text("{{ v }}", {"v": "x" * 100}, small) == "x" * 100
    with pytest.raises(RenderFailed, match="over 100 bytes"):
        text("{{ v }}", {"v": "é" * 51}, small)  # 102 bytes in UTF-8


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% include 'other' %}", "include is not allowed"),
        ("{% import 'm' as m %}", "import is not allowed"),
        ("{% extends 'base' %}", "extends is not allowed"),
        ("{% for x in y recursive %}{{ loop(x) }}{% endfor %}", "recursive loops"),
        ("{{ unclosed", "unexpected end of template"),
    ],
)
def test_what_cannot_compile_names_the_part(source: str, message: str) -> None:
    with pytest.raises(TemplateInvalid) as caught:
        renderer().compile("ok", None, source)
    assert caught.value.part == "html"
    assert message in caught.value.message


def test_everyday_templates_work() -> None:
    source = (
        "{% for item in items %}{{ loop.index }}. {{ item.name | title }}: "
        "{{ '%.2f' | format(item.price) }}{% if not loop.last %}, {% endif %}{% endfor %}"
        " | {{ items | map(attribute='name') | join('+') }} | {{ recipient.email }}"
    )
    data = {
        "items": [{"name": "tea", "price": 2.5}, {"name": "cake", "price": 3}],
        "recipient": {"email": "ann@example.com"},
    }
    assert text(source, data) == "1. Tea: 2.50, 2. Cake: 3.00 | tea+cake | ann@example.com"
