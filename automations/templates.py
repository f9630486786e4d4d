"""Jinja templates in action fields and `correlate` keys, rendered in jinja2's sandbox.

    render("{{ event.payload.result.batch_id }}", ctx)   → the value itself, type kept
                                                            (a number stays a number, a dict a dict)
    render("batch-{{ event.payload.result.n }}", ctx)    → a string
    render({"a": "{{ x }}", "b": [1, "{{ y }}"]}, ctx)   → rendered recursively

The sandbox refuses access to internals (`__class__`, `__mro__`, `__globals__` ...), and there is no
`import`. One operation may not build more than a million items or characters (`'x' * n`,
`[0] * n`, padding, format widths; huge powers are refused too). An undefined name or attribute is an error (StrictUndefined), not a silently empty
string: a typo in a template fails the action with a message saying which template and why.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateAssertionError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from automations.errors import TemplateError

__all__ = ["TemplateError", "has_template", "render", "render_str"]

#: The most items or characters one operation in a template may build (`'x' * n`, padding, ...).
_MAX_SIZE = 1_000_000
#: A width or precision with this many digits (10,000,000 and more) is refused in formats.
_HUGE_WIDTH = re.compile(r"\d{8,}")
_PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's sandbox, plus bounds on what one expression may build: the sandbox keeps
    templates from internals, not from `'x' * 10**9` or `10 ** 10 ** 9`, which would stop the
    rule engine (it renders in its event loop) or exhaust its memory."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * abs(left).bit_length() > 64 * 1024:
                    raise SecurityError(f"{left} ** {right} is too large to compute in a template")
            return left**right
        if operator == "%":
            if isinstance(left, str) and _HUGE_WIDTH.search(left):
                raise SecurityError(f"format {left[:50]!r}: widths and precisions are limited to 7 digits")
            return super().call_binop(context, operator, left, right)
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > _MAX_SIZE:
                raise SecurityError(
                    f"repeating a {type(seq).__name__} {times:,} times is over the limit of "
                    f"{_MAX_SIZE:,} items in a template"
                )
        return left * right

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja's signature
        name = getattr(__obj, "__name__", "")
        if isinstance(getattr(__obj, "__self__", None), str) and name in _PADDING:
            if any(isinstance(a, int) and a > _MAX_SIZE for a in args):
                raise SecurityError(f"str.{name} wider than {_MAX_SIZE:,} characters in a template")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        text = getattr(value, "__self__", None)  # str.format is wrapped when it is looked up
        if isinstance(text, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            if _HUGE_WIDTH.search(text):
                raise SecurityError(f"format {text[:50]!r}: widths and precisions are limited to 7 digits")
        return super().wrap_str_format(value)


_ENV = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
_ENV.filters["tojson"] = lambda value: json.dumps(value, default=str)
_ENV.policies["json.dumps_kwargs"] = {"default": str}


# Compiling is most of a render's cost (a correlate key is rendered for every event its join sees,
# an action's fields for every firing): each distinct template is compiled once.
@functools.lru_cache(maxsize=1024)
def _expression(source: str) -> Any:
    return _ENV.compile_expression(source, undefined_to_none=False)


@functools.lru_cache(maxsize=1024)
def _template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


#: `{{ expression }}` and nothing else: rendered as the expression's value, type kept.
_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)
_MARKERS = ("{{", "{%", "{#")
_MAX_OUTPUT = 1_000_000


def has_template(value: Any) -> bool:
    """Whether `value` (or anything inside it) contains template markers."""
    if isinstance(value, str):
        return any(m in value for m in _MARKERS)
    if isinstance(value, Mapping):
        return any(has_template(k) or has_template(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_template(v) for v in value)
    return False


def render(value: Any, context: Mapping[str, Any], *, where: str = "template") -> Any:
    """`value` with every template inside rendered against `context`."""
    if isinstance(value, str):
        return render_str(value, context, where=where)
    if isinstance(value, Mapping):
        return {
            render_str(str(k), context, where=f"{where}.{k}") if has_template(k) else k:
            render(v, context, where=f"{where}.{k}")
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [render(v, context, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def render_str(template: str, context: Mapping[str, Any], *, where: str = "template") -> Any:
    """One string: a single `{{ expression }}` gives its value (type kept); anything else with
    markers gives a string; a string without markers is returned as it is."""
    if not any(m in template for m in _MARKERS):
        return template
    try:
        single = _SINGLE.match(template)
        if single is not None:
            result = _expression(single.group("expr").strip())(**context)
            if isinstance(result, jinja2.Undefined):
                str(result)  # raises UndefinedError with the missing name
            if isinstance(result, str) and len(result) > _MAX_OUTPUT:
                raise TemplateError(f"{where}: {template!r} rendered {len(result)} characters (limit {_MAX_OUTPUT})")
            return _plain(result)
        out = _template(template).render(**context)
    except SecurityError as exc:
        raise TemplateError(f"{where}: {template!r} is not allowed: {exc}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{where}: {template!r}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{where}: {template!r} is not a valid template: {exc.message}") from None
    except TypeError as exc:
        if "no loader" in str(exc):
            raise TemplateError(
                f"{where}: {template!r} is not allowed: templates cannot import, include or extend other templates"
            ) from None
        raise TemplateError(f"{where}: {template!r} failed: TypeError: {exc}") from None
    except Exception as exc:  # a template's own error (division by zero, bad filter argument ...)
        raise TemplateError(f"{where}: {template!r} failed: {type(exc).__name__}: {exc}") from None
    if len(out) > _MAX_OUTPUT:
        raise TemplateError(f"{where}: {template!r} rendered {len(out)} characters (limit {_MAX_OUTPUT})")
    return out


def check_syntax(value: Any, *, where: str = "template") -> list[str]:
    """Syntax errors of every template inside `value` (for validation before anything runs)."""
    problems: list[str] = []
    if isinstance(value, str):
        if any(m in value for m in _MARKERS):
            try:
                _check_names(_ENV.parse(value))
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"{where}: {value!r} is not a valid template: {exc.message}")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            problems += check_syntax(k, where=where) + check_syntax(v, where=f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problems += check_syntax(v, where=f"{where}[{i}]")
    return problems


def _check_names(template: nodes.Template) -> None:
    """The check compiling adds to parsing (unknown filters and tests), without the cost of
    generating code: a 1,000-automation file is validated in well under a second."""
    for node in template.find_all((nodes.Filter, nodes.Test)):
        kind, known = ("filter", _ENV.filters) if isinstance(node, nodes.Filter) else ("test", _ENV.tests)
        if node.name not in known:
            raise TemplateAssertionError(f"No {kind} named {node.name!r}.", node.lineno)


def _plain(value: Any) -> Any:
    """Jinja's lazy values (Markup, generators from filters) as plain Python/JSON values."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    if hasattr(value, "__iter__") and not isinstance(value, bytes):
        return [_plain(v) for v in value]
    return value
