"""Templates: sandboxed, a single expression keeps its type, errors name the template."""

from __future__ import annotations

import re

import pytest

from automations.errors import TemplateError
from automations.templates import check_syntax, has_template, render

CTX = {
    "event": {"payload": {"result": {"batch_id": "b-17", "n": 3, "rows": [1, 2], "ok": True}}},
    "events": {"B/x": {"payload": {"result": "B(b-1)"}}},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ event.payload.result.batch_id }}", "b-17"),
        ("{{ event.payload.result.n }}", 3),
        ("{{ event.payload.result.rows }}", [1, 2]),
        ("{{ event.payload.result.ok }}", True),
        ("{{ event.payload.result }}", {"batch_id": "b-17", "n": 3, "rows": [1, 2], "ok": True}),
        ("  {{ event.payload.result.n + 1 }}  ", 4),
        ("batch-{{ event.payload.result.batch_id }}", "batch-b-17"),
        ("{{ event.payload.result.n }}/{{ event.payload.result.n }}", "3/3"),
        ("{{ events['B/x'].payload.result }}", "B(b-1)"),
        ("{{ event.payload.result | tojson }}", '{"batch_id": "b-17", "n": 3, "rows": [1, 2], "ok": true}'),
        ("no template", "no template"),
        ("{% if event.payload.result.ok %}yes{% endif %}", "yes"),
    ],
)
def test_render_values(template: str, expected: object) -> None:
    assert render(template, CTX) == expected


def test_render_nested_structures() -> None:
    value = {"a": "{{ event.payload.result.n }}", "b": ["x", "{{ event.payload.result.batch_id }}"], "c": 5}
    assert render(value, CTX) == {"a": 3, "b": ["x", "b-17"], "c": 5}


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.__class__ }}",
        "{{ event.payload.__init__.__globals__ }}",
        "{{ (lambda: 1) }}",
        "{% import 'os' as os %}{{ os }}",
        "{% include '/etc/passwd' %}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_sandbox_refuses_escapes(template: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, CTX, where="parameters.x")
    assert "parameters.x" in str(caught.value)


def test_undefined_names_are_errors_not_empty_strings() -> None:
    with pytest.raises(TemplateError, match="has no attribute 'missing'"):
        render("{{ event.payload.missing }}", CTX, where="parameters.batch")
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        render("x-{{ nope }}", CTX)


def test_syntax_errors_are_found_before_rendering() -> None:
    assert check_syntax({"a": "{{ event.payload", "b": "fine"}, where="parameters")[0].startswith(
        "parameters.a: '{{ event.payload' is not a valid template"
    )
    assert check_syntax(["{{ ok }}", "{% if %}"], where="x") != []
    assert check_syntax("{{ a.b }}") == []
    assert has_template({"k": ["{{ x }}"]}) and not has_template({"k": ["x"]})


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ range(10**9) | list | length }}", "Range too big"),
        ("{{ 'x' * 10**9 }}", "repeating a str 1,000,000,000 times is over the limit"),
        ("{{ ([0] * 10**9) | length }}", "repeating a list"),
        ("{{ 10 ** 10000000 }}", "10 ** 10000000 is too large"),
        ("{{ 'x'.ljust(10**9) }}", "str.ljust wider than 1,000,000 characters"),
        ("{{ '%999999999d' % 1 }}", "widths and precisions are limited"),
        ("{{ '{:>999999999}'.format(1) }}", "widths and precisions are limited"),
    ],
)
def test_resource_abuse_is_refused_before_it_is_built(template: str, message: str) -> None:
    """The sandbox guards internals, not size: these would hold the rule engine's event loop or
    exhaust its memory (`[0] * 10**9` took 30 s to fail with MemoryError)."""
    with pytest.raises(TemplateError, match=re.escape(message)):
        render(template, CTX, where="parameters.x")


def test_ordinary_arithmetic_and_formatting_still_work() -> None:
    assert render("{{ 'ab' * 3 }}-{{ 2 ** 10 }}-{{ '%05d' % 7 }}-{{ '{:>4}'.format(1) }}", CTX) == "ababab-1024-00007-   1"
    assert render("{{ [0] * 3 }}", CTX) == [0, 0, 0]
